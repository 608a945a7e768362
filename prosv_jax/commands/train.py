"""`prosv-jax train`: trains steering runs from an ml-collections config (method.md sections 2-3).

    prosv-jax train --config experiments/configs/tiny_prosv.py [--config.optim.factor_lr=10 ...] [--out DIR]

The resolved config is printed and saved as DIR/config.json (+ config.txt). Results: DIR/runs/<run>/ (steering.json
+ params.safetensors), DIR/groups/*/metrics.jsonl, DIR/summary.json, DIR/loss_curves.png. Rerunning the same
command on the same DIR resumes: finished groups are skipped, the others restart from their latest checkpoint.

Several devices: --config.mesh.data/fsdp/tensor (see experiments/configs/base.py). Several hosts: the same command on
each, with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set, or with --distributed under SLURM,
Open MPI or a multi-host Cloud TPU (`prosv_jax.distributed`); DIR must be shared by the hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap



# Fields that may change between a run and its resumption (they do not change the results beyond float rounding).
_RESUME_FREE = ("train.progress", "train.runs_per_chunk", "train.pack_length", "model.scan_min_blocks", "mesh",
                "mesh.data", "mesh.fsdp", "mesh.tensor")
MESH_AXES = ("data", "fsdp", "tensor")
_MULTI_HOST_HELP = """\
several hosts: run the same command on every host, with the output folder on a file system they share, and either
  JAX_COORDINATOR_ADDRESS=host0:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i   (set all three, i = 0..N-1), or
  --distributed under SLURM (srun), Open MPI (mpirun) or on a multi-host Cloud TPU (jax reads the cluster).
Host i trains the groups g of the grid with g % N == i, on its own devices (--config.mesh.*); host 0 writes
summary.json, the table and the loss plot once all are done. A rerun resumes, with any number of hosts.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train steering vectors (a grid of runs) from a config file",
        description=textwrap.fill(
                    "Train steering vectors from an ml-collections config file (experiments/configs/*.py). "
                    "Any field can be overridden with --config.FIELD=VALUE (e.g. --config.optim.factor_lr=10, "
                    "--config.grid.seeds=[1,2]). Rerunning on the same --out resumes. Several devices of one "
                    "host: --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2 (sizes multiply to the "
                    "devices used; fsdp/tensor split the model's weights, data the runs of a group).", 116),
        epilog=_MULTI_HOST_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="FILE", help="a .py config file exposing get_config()")
    parser.add_argument("--out", metavar="DIR", help="output folder (overrides config.out_dir)")
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-host run described by the cluster (SLURM, Open MPI, Cloud TPU); not needed "
                             "when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set")
    parser.set_defaults(run=run, config_overrides=[])
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        """Takes every --config.a.b=value (or --config.a.b value) out before argparse sees it."""
        args = list(sys.argv[1:] if args is None else args)
        overrides, rest, i = [], [], 0
        while i < len(args):
            arg = args[i]
            if arg.startswith("--config."):
                if "=" not in arg and i + 1 < len(args):
                    arg, i = f"{arg}={args[i + 1]}", i + 1
                overrides.append(arg)
            else:
                rest.append(arg)
            i += 1
        parsed, extra = original(rest, namespace)
        parsed.config_overrides = list(getattr(parsed, "config_overrides", None) or []) + overrides
        return parsed, extra

    parser.parse_known_args = parse_known_args


def _fmt(x: float) -> str:
    return f"{x:g}"


def _model_dir(config) -> str:
    """The local folder of model.path (any source `resolve_model_dir` takes), converted or built if need be."""
    from prosv_jax.models.sources import model_names_help, resolve_model_dir

    if not config.model.path:
        hint = f"/path/to/{config.model.name}" if config.model.name else "/path/to/model"
        raise ValueError(f"model.path is not set: pass --config.model.path={hint} ({model_names_help()})")
    return resolve_model_dir(config.model.path)


def make_steering(config):
    from prosv_jax.interventions import LoReFT, Steering, SteeringVector

    s = config.steering
    if s.kind == "steering_vector":
        kind = SteeringVector(beta=s.beta, c=s.c, lam=s.lam, init=s.init, unit_norm=s.unit_norm,
                              train_factor=s.train_factor)
    elif s.kind == "loreft":
        kind = LoReFT(rank=s.rank)
    else:
        raise ValueError(f"steering.kind must be 'steering_vector' or 'loreft', got {s.kind!r}")
    return Steering.single(s.layer, kind, s.positions)


def make_runs(config, concept_ids) -> list:
    """Run specs: grid.seeds x factor_lrs x direction_lrs x betas x (cs for the uniform init, lams for the normal
    one; an empty list = the config's single value) x concepts, named by their settings (e.g.
    c0-s42-flr1-dlr0.04-b2-c1, or ...-b2-lam0.5 for the normal init)."""
    import itertools

    from prosv_jax.training.trainer import RunSpec

    g, s, o = config.grid, config.steering, config.optim
    if not g.seeds:
        raise ValueError("grid.seeds is empty: give at least one seed")
    sv = s.kind == "steering_vector"
    lams = list(g.get("lams", []))
    if not sv and (g.betas or g.cs or lams or g.factor_lrs or g.direction_lrs):
        raise ValueError("grid.betas / cs / lams / factor_lrs / direction_lrs apply to steering vectors only "
                         f"(steering.kind is {s.kind!r})")
    # the init's size: c for the uniform init, lam for the normal one (m5: the other one has no effect)
    size_name = "c" if s.init == "uniform" else "lam"
    wrong = lams if size_name == "c" else g.cs
    if wrong:
        raise ValueError(f"grid.{'lams' if size_name == 'c' else 'cs'} has no effect with steering.init="
                         f"{s.init!r}; sweep grid.{size_name}s instead")
    sizes = (g.cs or [s.c]) if size_name == "c" else (lams or [s.lam])
    runs = []
    for cid, seed, flr, dlr, beta, size in itertools.product(
            concept_ids, g.seeds, g.factor_lrs or [o.factor_lr], g.direction_lrs or [o.direction_lr],
            g.betas or [s.beta], sizes):
        if sv:
            name = f"c{cid}-s{seed}-flr{_fmt(flr)}-dlr{_fmt(dlr)}-b{_fmt(beta)}-{size_name}{_fmt(size)}"
            init = (("beta", float(beta)), (size_name, float(size)))
            lrs = (("factor", float(flr)), ("direction", float(dlr)))
        else:
            name, init, lrs = f"c{cid}-s{seed}-lr{_fmt(o.other_lr)}", (), ()
        runs.append(RunSpec(name=name, seed=int(seed), dataset=f"c{cid}", init=init, lrs=lrs))
    return runs


def response_cut(config) -> int | None:
    """The response cut of the config's objective in tokens, None for none: the reference trains Lang on whole
    responses and cuts at 128 on its SimPO path only (method.md section 3); data.max_response (0 = none) and
    data.simpo_max_response set them."""
    cut = config.data.simpo_max_response if config.objective == "simpo" else config.data.max_response
    return cut or None


def build_datasets(config, tokenizer) -> tuple[dict, list[int]]:
    """{"c<id>": TrainDataset} for every concept of the config, and the concept ids."""
    from prosv_jax.data import axbench
    from prosv_jax.training.data import TrainDataset

    d = config.data
    ids = [int(i) for i in d.concept_ids] or axbench.concept_ids(d.split_dir)
    negatives = axbench.require_negatives(d.negatives) if config.objective == "simpo" else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cut = response_cut(config)
    datasets = {}
    for cid in ids:
        positives = axbench.concept_positives(d.split_dir, cid)
        if d.max_examples:
            positives = positives[:d.max_examples]  # the first N, in the split's order (a budget knob)
        neg_examples = None
        if negatives:
            neg_pairs = axbench.concept_negatives(negatives, cid, positives)
            neg_examples = axbench.lang_examples(tokenizer, neg_pairs, cut, d.chat)
        datasets[f"c{cid}"] = TrainDataset.from_examples(
            axbench.lang_examples(tokenizer, positives, cut, d.chat), neg_examples, max_response=cut, pad_id=pad_id)
    return datasets, ids


def check_config(config) -> None:
    """Every value of the config checked before anything loads (types and ranges: `config_checks`)."""
    from prosv_jax.config_checks import check_layer, check_values
    from prosv_jax.interventions.positions import PositionSpec
    from prosv_jax.models.config import ModelConfig

    check_values(config)
    for axis in MESH_AXES:
        size = config.mesh[axis]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"mesh.{axis} must be a positive integer, got {size!r}")

    if config.objective not in ("lang", "simpo"):
        raise ValueError(f"objective must be 'lang' or 'simpo', got {config.objective!r}")
    if config.model.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype must be float32 or bfloat16, got {config.model.dtype!r}")
    PositionSpec.parse(config.steering.positions)
    model_dir = _model_dir(config)
    check_layer(config, ModelConfig.from_pretrained(model_dir).num_layers, model_dir)
    if not config.data.split_dir:
        raise ValueError("data.split_dir is not set: pass --config.data.split_dir=DIR (an AxBench "
                         "prod_<model>_<layer>_v1 folder, or its generate/ folder)")
    if config.objective == "simpo":
        from prosv_jax.data.axbench import require_negatives

        require_negatives(config.data.negatives)


def make_train_mesh(config):
    """This process's mesh from config.mesh, on its own devices; None for one device (all sizes 1, one process).

    With several processes every one gets a mesh, even of one device: the weights must be placed on a device of
    this process (jax.devices()[0] may belong to another).
    """
    import math

    import jax

    from prosv_jax.models.sharding import make_mesh

    shape = {axis: int(config.mesh[axis]) for axis in MESH_AXES}
    size = math.prod(shape.values())
    if size == 1 and jax.process_count() == 1:
        return None
    local = jax.local_devices()
    if size > len(local):
        raise ValueError(f"mesh {shape} needs {size} devices; this process has {len(local)} "
                         f"({local[0].platform}): lower --config.mesh.*")
    return make_mesh(shape, local[:size])


def train_from_config(config, log=print) -> dict:
    """Trains every run of a resolved config into config.out_dir; returns {run name: summary}."""
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from prosv_jax.models.loading import load_model
    from prosv_jax.training.trainer import TrainConfig, Trainer

    check_config(config)
    model_dir = _model_dir(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    datasets, ids = build_datasets(config, tokenizer)
    runs = make_runs(config, ids)
    steering = make_steering(config)
    optim, step_config = optim_and_step(config)
    t = config.train
    train_config = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, prefix_cache=t.prefix_cache,
                               runs_per_program=t.runs_per_program, runs_per_chunk=t.runs_per_chunk,
                               param_dtype=t.param_dtype,
                               checkpoint_every=t.checkpoint_every, progress=t.progress,
                               pack_length=t.pack_length)
    mesh = make_train_mesh(config)
    model = load_model(model_dir, jnp.dtype(config.model.dtype), mesh=mesh)
    model.scan_min_blocks = config.model.get("scan_min_blocks", model.scan_min_blocks)
    log(f"training {len(runs)} run(s) on {len(datasets)} concept(s) ({', '.join(datasets)}), "
        f"{sum(len(d) for d in datasets.values())} examples, model {model_dir}"
        + ("" if mesh is None else f", mesh {dict(mesh.shape)} of {mesh.devices.flat[0].platform} devices"))
    from prosv_jax.config import to_dict

    # A one-device mesh (one of several processes) only placed the weights on this process's device; the
    # Trainer treats it as the single device it is.
    trainer = Trainer(model, steering, datasets, config.out_dir, optim, step_config, train_config,
                      metadata={"config": to_dict(config)}, mesh=mesh if mesh is not None and mesh.size > 1 else None)
    summaries = trainer.train(runs)
    if trainer.process_count > 1:
        log(f"process {trainer.process_index} of {trainer.process_count} trained group(s) {trainer.trained_groups}")
    return summaries


def optim_and_step(config):
    """The (OptimConfig, StepConfig) a training config describes."""
    import dataclasses

    from prosv_jax.training.optim import OptimConfig
    from prosv_jax.training.step import StepConfig

    optim_fields = {f.name for f in dataclasses.fields(OptimConfig)}
    optim_values = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in config.optim.items()}
    unknown = sorted(set(optim_values) - optim_fields)
    if unknown:
        raise ValueError(f"optim field(s) {unknown} are not OptimConfig fields ({sorted(optim_fields)})")
    return OptimConfig(**optim_values), StepConfig(objective=config.objective, vocab_chunk=config.vocab_chunk,
                                                   blowup_loss=config.train.blowup_loss)


def summary_rows(out_dir: str, summaries: dict) -> list[dict]:
    """One row per run: name, final and best loss, alpha and |v| of the saved steering, diverged."""
    import numpy as np

    from prosv_jax.interventions import SteeringVector, load_steering

    rows = []
    for name, summary in summaries.items():
        alpha = vnorm = None
        steering, params, _ = load_steering(summary["steering"])
        for site in steering.sites:
            if isinstance(site.kind, SteeringVector):
                alpha = float(np.asarray(params[site.name]["alpha"]))
                vnorm = float(np.linalg.norm(np.asarray(params[site.name]["v"], np.float32)))
                break
        rows.append({"run": name, "final_loss": summary["final_loss"], "best_loss": summary["best_loss"],
                     "alpha": alpha, "v_norm": vnorm, "diverged": summary["diverged"]})
    return rows


def format_table(rows: list[dict]) -> str:
    num = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    header = ("run", "final loss", "best loss", "alpha", "|v|", "diverged")
    body = [(r["run"], num(r["final_loss"]), num(r["best_loss"]), num(r["alpha"]), num(r["v_norm"]),
             "yes" if r["diverged"] else "no") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def run(args: argparse.Namespace) -> int:
    from prosv_jax import distributed

    distributed.initialize_from_env(auto_detect=args.distributed)  # before anything starts a jax backend
    try:
        with distributed.failing_together():  # an error on one host stops the others
            return _run(args)
    except distributed.DistributedError as error:  # another host failed: its own log has the cause
        print(f"prosv-jax train: {error}", file=sys.stderr)
        return 1


def _extends(old_ids, new_ids) -> bool:
    """Whether `new_ids` lists `old_ids` first, in the same order, then more (a train folder grown by concepts)."""
    old_ids, new_ids = list(old_ids), list(new_ids)
    return bool(old_ids) and len(new_ids) > len(old_ids) and new_ids[:len(old_ids)] == old_ids


def _run(args: argparse.Namespace) -> int:
    import jax

    from prosv_jax import distributed
    from prosv_jax.config import CONFIG_JSON, config_text, diff, resolve, save_config, to_dict
    from prosv_jax.training.plots import plot_loss_curves

    main_process = jax.process_index() == 0
    config = resolve(args.config, args.config_overrides)
    if args.out:
        config.out_dir = args.out
    if not config.out_dir:
        config.out_dir = os.path.join("outputs", os.path.splitext(os.path.basename(args.config))[0])
    config.out_dir = os.path.abspath(config.out_dir)
    if main_process:
        print(f"config {os.path.abspath(args.config)}"
              + (f" with {' '.join(args.config_overrides)}" if args.config_overrides else "") + ":")
        print(config_text(config))
    if jax.process_count() > 1:
        print(f"process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local device(s)")
    check_config(config)
    saved = os.path.join(config.out_dir, CONFIG_JSON)
    if os.path.isfile(saved) and os.path.isdir(os.path.join(config.out_dir, "groups")):
        with open(saved) as f:
            old = json.load(f)
        changed = [n for n in diff(old, to_dict(config)) if n not in _RESUME_FREE]
        if changed == ["data.concept_ids"] and _extends(old["data"]["concept_ids"], config.data.concept_ids):
            changed = []  # more concepts after the trained ones: finished groups are kept (their run names checked)
        if changed:
            raise ValueError(f"{config.out_dir} holds results of another config (fields {changed} differ); "
                             "rerun with the same config to resume, or choose a new --out")
        if main_process:
            print(f"resuming in {config.out_dir}")
    distributed.barrier("config-checked")  # every process has read the old config before process 0 rewrites it
    if main_process:
        save_config(config, config.out_dir)
    sys.stdout.flush()
    summaries = train_from_config(config)
    if not main_process:
        print(f"done; process 0 writes {os.path.join(config.out_dir, 'summary.json')}")
        sys.stdout.flush()
        return 0
    plot = plot_loss_curves(config.out_dir)
    print()
    print(format_table(summary_rows(config.out_dir, summaries)))
    print()
    print(f"config:       {saved}")
    print(f"summary:      {os.path.join(config.out_dir, 'summary.json')}")
    print(f"steerings:    {os.path.join(config.out_dir, 'runs')}/<run>/")
    print(f"metrics:      {os.path.join(config.out_dir, 'groups')}/*/metrics.jsonl")
    print(f"loss curves:  {plot}")
    sys.stdout.flush()
    return 0
