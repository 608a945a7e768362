"""Training many steering runs at once: grids of (hyperparameters x seeds x datasets), vmapped in groups.

Runs share the frozen model weights and one compiled step; each run has its own init, learning rates, data order
and optimiser state. A group of runs is checkpointed together and resumes where it stopped; a diverged run is
flagged and frozen while the others go on. Results per run: the saved steering, a JSONL of metrics, a summary.

On a device mesh (`Trainer(..., mesh=make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))`) the frozen weights are
placed by the sharding rules (FSDP / tensor parallel), the leading runs axis of the params, optimiser state and
learning rates is split over the rules' `runs` axis ("data"; replicated when the group's run count does not divide
it), each step's per-run batches over (runs, batch), and the cached prefix is stored with its hidden axis split like
the weights' `embed` axis. With several processes (`prosv_jax.distributed`), process p trains the groups
g with g % process_count == p into the shared `out_dir`, on a mesh of its own devices; once every process is done,
process 0 writes the merged summary.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from prosv_jax import distributed
from prosv_jax.files import write_atomic, write_json
from prosv_jax.interventions.io import save_steering
from prosv_jax.interventions.transform import Steering
from prosv_jax.models.decoder import Decoder
from prosv_jax.models.sharding import ShardingRules, batch_sharding, partition_spec, weight_sharding
from prosv_jax.training.batch import TrainBatch
from prosv_jax.training.checkpoint import RunCheckpoints
from prosv_jax.training.data import TrainDataset, batch_indices, steps_per_epoch
from prosv_jax.training.optim import (OptimConfig, make_optimizer, param_labels, schedule_fraction,
                                     schedule_steps)
from prosv_jax.training.packing import PackMap, pack_map, packed_step_data, plan_shape
from prosv_jax.training.step import (StepConfig, StepData, TrainState, make_train_step, prefix_residuals,
                                     reference_logprob_sums)

PREFIX_CACHE = ("device", "host", "off")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: its name, seed, dataset, and overrides of the steering init and of the group learning rates."""

    name: str
    seed: int = 42
    dataset: str = "default"
    init: tuple[tuple[str, float], ...] = ()  # e.g. (("beta", 4.0), ("c", 8.0))
    lrs: tuple[tuple[str, float], ...] = ()  # e.g. (("factor", 10.0), ("direction", 0.04))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 12
    prefix_cache: str = "device"  # device | host | off: where the cached block-L residuals live
    runs_per_program: int = 4  # runs trained together by one compiled program
    # Runs vmapped at once inside the program (the program loops over chunks of this many); 0 = auto: 1 on a
    # single CPU device, where one run already fills the cores and wider batches only add memory traffic, else
    # all of the group's runs (accelerators, meshes).
    runs_per_chunk: int = 0
    param_dtype: str = "float32"
    # micro-steps between checkpoints; -1 (default) = once per epoch, so a kill loses at most an epoch; 0 = at the end
    # of each group only
    checkpoint_every: int = -1
    progress: bool = True
    # Packed rows: each step's examples placed several to a row of this many tokens (0 = off: one example per row,
    # padded to the dataset's longest). The loss and gradients are the unpacked ones; see `training.packing`.
    pack_length: int = 0

    def __post_init__(self):
        if self.prefix_cache not in PREFIX_CACHE:
            raise ValueError(f"prefix_cache must be one of {PREFIX_CACHE}, got {self.prefix_cache!r}")
        if self.runs_per_chunk < 0:
            raise ValueError(f"runs_per_chunk must be >= 0 (0 = auto), got {self.runs_per_chunk}")
        if self.pack_length < 0:
            raise ValueError(f"pack_length must be >= 0 (0 = unpacked rows), got {self.pack_length}")


def _pad_batch(batch: TrainBatch, length: int, slots: int) -> TrainBatch:
    """Pads a packed batch to T=length and R=slots (right padding; masks stay False there)."""
    pad_t, pad_r = length - batch.tokens.shape[1], slots - batch.target_ids.shape[1]
    t = lambda a: np.pad(a, ((0, 0), (0, pad_t)))  # noqa: E731  [N, T] -> [N, length]
    r = lambda a: np.pad(a, ((0, 0), (0, pad_r)))  # noqa: E731  [N, R] -> [N, slots]
    return TrainBatch(t(batch.tokens), t(batch.valid), t(batch.prompt_mask), r(batch.target_index),
                      r(batch.target_ids), r(batch.target_mask))


def union_dataset(datasets: Sequence[TrainDataset]) -> tuple[TrainDataset, list[int]]:
    """One dataset holding all of `datasets` at a common shape, and each one's row offset in it."""
    length = max(d.positives.tokens.shape[1] for d in datasets)
    slots = max(d.positives.target_ids.shape[1] for d in datasets)
    paired = {d.paired for d in datasets}
    if len(paired) != 1:
        raise ValueError("runs trained together must all have negatives (SimPO) or none (Lang)")
    cat = lambda parts: TrainBatch(*(np.concatenate(f) for f in zip(*[_pad_batch(p, length, slots)  # noqa: E731
                                                                       for p in parts])))
    offsets = list(np.cumsum([0] + [len(d) for d in datasets])[:-1])
    negatives = cat([d.negatives for d in datasets]) if paired.pop() else None
    return TrainDataset(cat([d.positives for d in datasets]), negatives), offsets


# --- placement on a mesh ------------------------------------------------------------------------------------------


def _sharding(mesh: Mesh, *entries) -> NamedSharding:
    """NamedSharding with trailing replicated dims dropped (P("data", None) -> P("data"), P(None) -> P()): the
    form jit gives its outputs, so a state fed back in finds the program it came from."""
    entries = list(entries)
    while entries and entries[-1] is None:
        entries.pop()
    return NamedSharding(mesh, PartitionSpec(*entries))


def runs_sharding(mesh: Mesh, rules: ShardingRules, shape) -> NamedSharding:
    """A [K, ...] leaf of a group (params, optimiser state, learning rates, metrics): K over the runs axis."""
    return _sharding(mesh, *partition_spec(("runs",), tuple(shape)[:1], mesh, rules))


def step_data_sharding(mesh: Mesh, rules: ShardingRules, shape) -> NamedSharding:
    """A [K, B, ...] leaf of a step's data: K over the runs axis, B over the batch axes left, the rest replicated."""
    return _sharding(mesh, *partition_spec(("runs", "batch"), tuple(shape)[:2], mesh, rules))


def prefix_cache_sharding(mesh: Mesh, rules: ShardingRules, shape) -> NamedSharding:
    """The cached residuals [N, T, d]: rows replicated (any run may pick any row), d split like the weights'."""
    return _sharding(mesh, None, None, *partition_spec(("embed",), tuple(shape)[2:], mesh, rules))


def _constrain(tree, mesh: Mesh | None, rules: ShardingRules, sharding_of):
    if mesh is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding_of(mesh, rules, x.shape)), tree)


def _check_local_mesh(mesh: Mesh) -> None:
    foreign = [d for d in mesh.devices.flat if d.process_index != jax.process_index()]
    if foreign:
        raise ValueError(f"the mesh holds {len(foreign)} device(s) of other processes: each process trains its own "
                         "groups on a mesh of its own devices (make_mesh(shape, jax.local_devices()))")


def place_model(model: Decoder, mesh: Mesh, rules: ShardingRules) -> Decoder:
    """The model with every weight placed by the rules on `mesh` (weights already in place are not moved)."""
    graphdef, state = nnx.split(model)
    flat = []
    for path, variable in nnx.to_flat_state(state):
        value = variable[...]
        target = weight_sharding(path[-1], value.shape, mesh, rules)
        if not (isinstance(value, jax.Array) and value.sharding.is_equivalent_to(target, value.ndim)):
            value = jax.device_put(value, target)
        flat.append((path, variable.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


class GroupData:
    """A group's union dataset with its cached prefix and reference log-probs; gathers per-run batches.

    With a mesh, the rows and reference log-probs are replicated on it, the prefix cache is stored by
    `prefix_cache_sharding`, and each gathered batch is laid out by `step_data_sharding`.
    """

    def __init__(self, model: Decoder, steering: Steering, dataset: TrainDataset, config: TrainConfig,
                 step_config: StepConfig, mesh: Mesh | None = None, rules: ShardingRules = ShardingRules()):
        self.paired = dataset.paired
        self.mesh, self.rules = mesh, rules
        place = (lambda a: jnp.asarray(a)) if mesh is None else (  # noqa: E731
            lambda a: jax.device_put(a, _sharding(mesh)))
        rows = [dataset.positives] + ([dataset.negatives] if dataset.paired else [])
        self.arrays = [TrainBatch(*(place(a) for a in r)) for r in rows]
        self.prefix = None
        self.reference = [place(np.zeros(len(dataset), np.float32)) for _ in rows]
        if config.prefix_cache != "off":
            to_host = config.prefix_cache == "host"
            self.prefix = [self._map(model, functools.partial(_prefix, steering=steering), r, to_host)
                           for r in self.arrays]
            if mesh is not None and not to_host:
                self.prefix = [jax.device_put(p, prefix_cache_sharding(mesh, rules, p.shape)) for p in self.prefix]
        if step_config.objective == "simpo":
            self.reference = [self._map(model, functools.partial(_reference, chunk=step_config.vocab_chunk), r,
                                        False) for r in self.arrays]
            if mesh is not None:
                self.reference = [place(r) for r in self.reference]

    def _map(self, model, fn, rows: TrainBatch, to_host: bool, chunk: int = 16):
        """fn over the dataset in row chunks (bounded memory), concatenated on device or host."""
        graphdef, state = nnx.split(model)
        outputs = []
        total = rows.tokens.shape[0]
        for start in range(0, total, chunk):
            # The last chunk is padded to full size (rows repeated), so one compiled program serves every chunk.
            take = np.minimum(np.arange(start, start + chunk), total - 1)
            part = TrainBatch(*(a[take] for a in rows))
            if self.mesh is not None:  # the chunk's rows split over the batch axes, like a training batch
                part = TrainBatch(*(jax.device_put(a, batch_sharding(self.mesh, self.rules, a.ndim, chunk))
                                    for a in part))
            out = fn(graphdef, state, part)[:min(chunk, total - start)]
            outputs.append(np.asarray(out) if to_host else out)
        return np.concatenate(outputs) if to_host else jnp.concatenate(outputs)

    def gather(self, indices: np.ndarray, row_mask: np.ndarray) -> StepData:
        """StepData [K, B', ...] for per-run example indices [K, B] (B' = 2B with negatives)."""
        on_host = self.prefix is not None and isinstance(self.prefix[0], np.ndarray)
        parts = []
        for i, rows in enumerate(self.arrays):
            prefix = None
            if self.prefix is not None:
                prefix = self.prefix[i][indices] if on_host else self.prefix[i]
                if on_host and self.mesh is not None:  # each device receives its own slice only
                    prefix = jax.device_put(prefix, step_data_sharding(self.mesh, self.rules, prefix.shape))
            parts.append((rows, self.reference[i], prefix))
        return _gather_rows(tuple(parts), jnp.asarray(indices), jnp.asarray(row_mask), prefix_gathered=on_host,
                            mesh=self.mesh, rules=self.rules)

    def example_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, response tokens) [N'] of every dataset row: positives, then negatives (packing's sources)."""
        tokens = np.concatenate([np.asarray(r.valid).sum(1) for r in self.arrays])
        return tokens, np.concatenate([np.asarray(r.target_mask).sum(1) for r in self.arrays])

    @functools.cached_property
    def _sources(self) -> tuple:
        """(rows, reference log-probs, prefix) of positives then negatives in one array each: packing's sources."""
        cat = lambda parts: parts[0] if len(parts) == 1 else (  # noqa: E731
            np.concatenate(parts) if isinstance(parts[0], np.ndarray) else jnp.concatenate(parts))
        prefix = None if self.prefix is None else cat(self.prefix)
        return TrainBatch(*(cat(fields) for fields in zip(*self.arrays))), cat(self.reference), prefix

    def gather_packed(self, maps: PackMap) -> StepData:
        """Packed StepData [K, P, ...] of per-run maps [K, ...] whose sources index positives then negatives."""
        rows, reference, prefix = self._sources
        on_host = isinstance(prefix, np.ndarray)
        if on_host:  # gathered here: only the packed slots travel to the device
            prefix = prefix[maps.source, maps.offset]  # [K, P, L, d]
            if self.mesh is not None:
                prefix = jax.device_put(prefix, step_data_sharding(self.mesh, self.rules, prefix.shape))
        return _gather_packed(rows, reference, prefix, PackMap(*(jnp.asarray(a) for a in maps)),
                              prefix_gathered=on_host, mesh=self.mesh, rules=self.rules)


@functools.partial(jax.jit, static_argnames=("prefix_gathered", "mesh", "rules"))
def _gather_rows(parts, indices, row_mask, *, prefix_gathered: bool, mesh: Mesh | None,
                 rules: ShardingRules) -> StepData:
    take = lambda a: jnp.take(a, indices, axis=0)  # noqa: E731  [N, ...] -> [K, B, ...]
    out = []
    for rows, reference, prefix in parts:
        if prefix is not None and not prefix_gathered:
            prefix = take(prefix)
        out.append(StepData(take(rows.tokens), take(rows.valid), take(rows.prompt_mask), take(rows.target_index),
                            take(rows.target_ids), take(rows.target_mask) & row_mask[..., None], take(reference),
                            prefix))
    data = out[0] if len(out) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *out)
    return _constrain(data, mesh, rules, step_data_sharding)


@functools.partial(jax.jit, static_argnames=("prefix_gathered", "mesh", "rules"))
def _gather_packed(rows, reference, prefix, maps, *, prefix_gathered: bool, mesh: Mesh | None,
                   rules: ShardingRules) -> StepData:
    source_prefix = None if prefix_gathered else prefix
    data = jax.vmap(packed_step_data, in_axes=(None, None, None, 0))(rows, reference, source_prefix, maps)
    if prefix_gathered:
        data = data._replace(prefix=prefix)
    return _constrain(data, mesh, rules, step_data_sharding)


@functools.partial(jax.jit, static_argnames=("graphdef", "steering"))
def _prefix(graphdef, state, rows: TrainBatch, *, steering):
    return prefix_residuals(nnx.merge(graphdef, state), steering, rows.tokens, rows.valid)


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk"))
def _reference(graphdef, state, rows: TrainBatch, *, chunk):
    data = StepData(rows.tokens, rows.valid, rows.prompt_mask, rows.target_index, rows.target_ids,
                    rows.target_mask, jnp.zeros(rows.tokens.shape[0]))
    return reference_logprob_sums(nnx.merge(graphdef, state), data, chunk)


class Trainer:
    """Trains lists of runs of one steering spec on named datasets; writes everything under `out_dir`.

    `mesh`: a mesh of this process's devices with axes among "data", "fsdp", "tensor" (see
    `prosv_jax.models.sharding`); None = one device. `rules` maps the logical axes onto it.
    """

    def __init__(self, model: Decoder, steering: Steering, datasets: dict[str, TrainDataset], out_dir: str,
                 optim: OptimConfig = OptimConfig(), step_config: StepConfig = StepConfig(),
                 config: TrainConfig = TrainConfig(), metadata: dict | None = None, *, mesh: Mesh | None = None,
                 rules: ShardingRules = ShardingRules()):
        steering.validate(model.cfg)
        if mesh is not None:
            _check_local_mesh(mesh)
            model = place_model(model, mesh, rules)
        for name, dataset in datasets.items():
            if step_config.objective == "simpo" and not dataset.paired:
                raise ValueError(f"dataset {name!r} has no negatives: the SimPO objective needs a concept-free "
                                 "response per example")
        self.model, self.steering, self.datasets = model, steering, datasets
        self.optim, self.step_config, self.config = optim, step_config, config
        self.out_dir = out_dir
        self.metadata = metadata or {}
        self.param_dtype = jnp.dtype(config.param_dtype)
        self.mesh, self.rules = mesh, rules
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.trained_groups: list[int] = []  # the groups this process trained (or found done) in the last train()
        os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)

    # --- set-up of one group of runs ------------------------------------------------------------------------

    def _init_params(self, run: RunSpec):
        overrides = dict(run.init)
        sites = []
        for site in self.steering.sites:
            fields = {f.name for f in dataclasses.fields(site.kind)}
            unknown = set(overrides) - fields
            if unknown:
                raise ValueError(f"run {run.name!r}: init override(s) {sorted(unknown)} are not fields of "
                                 f"{type(site.kind).__name__} ({sorted(fields)})")
            sites.append(dataclasses.replace(site, kind=dataclasses.replace(site.kind, **overrides)))
        return Steering(tuple(sites)).init_params(jax.random.key(run.seed), self.model.cfg, self.param_dtype)

    def _learning_rates(self, run: RunSpec) -> dict[str, float]:
        base = {"factor": self.optim.factor_lr, "direction": self.optim.direction_lr, "other": self.optim.other_lr}
        unknown = set(dict(run.lrs)) - set(base)
        if unknown:
            raise ValueError(f"run {run.name!r}: learning-rate group(s) {sorted(unknown)} unknown; groups: "
                             f"{sorted(base)}")
        optim = dataclasses.replace(self.optim, **{f"{g}_lr": v for g, v in run.lrs})
        return optim.learning_rates(self.model.cfg.hidden_size)

    def _total_steps(self, dataset: TrainDataset) -> int:
        return self.config.epochs * steps_per_epoch(len(dataset), self.config.batch_size)

    # --- training ---------------------------------------------------------------------------------------------

    def train(self, runs: Sequence[RunSpec]) -> dict[str, dict]:
        """Trains every run (resuming finished work); returns {run name: summary}.

        With several processes, each trains its share of the groups (round-robin by process index); every process
        waits for all of them, then returns the summaries of the whole grid, and process 0 writes summary.json.
        """
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise ValueError(f"run names must be unique, got {names}")
        missing = sorted({r.dataset for r in runs} - set(self.datasets))
        if missing:
            raise ValueError(f"runs name unknown dataset(s) {missing}; known: {sorted(self.datasets)}")
        per = self.config.runs_per_program
        groups = [list(runs[start:start + per]) for start in range(0, len(runs), per)]
        self.trained_groups = [i for i in range(len(groups)) if i % self.process_count == self.process_index]
        summaries = {}
        with distributed.failing_together():  # a failure here stops the other processes too
            for index in self.trained_groups:
                distributed.raise_if_another_failed()
                summaries.update(self._train_group(groups[index], index))
        if self.process_count > 1:
            distributed.barrier("prosv-jax-train-groups-done")
            summaries = {}
            for index in range(len(groups)):
                with open(self._done_file(index)) as f:
                    summaries.update(json.load(f))
        if self.process_index == 0:
            write_json(os.path.join(self.out_dir, "summary.json"), summaries)
        return summaries

    def _done_file(self, index: int) -> str:
        return os.path.join(self.out_dir, "groups", f"group-{index:04d}", "done.json")

    def _train_group(self, group: list[RunSpec], index: int) -> dict[str, dict]:
        done_file = self._done_file(index)
        group_dir = os.path.dirname(done_file)
        if os.path.isfile(done_file):
            with open(done_file) as f:
                done = json.load(f)
            if sorted(done) != sorted(r.name for r in group):
                raise ValueError(f"{group_dir} holds finished runs {sorted(done)}, not this group's "
                                 f"{sorted(r.name for r in group)}: use a new out_dir for a changed grid")
            return done
        dataset_names = sorted({r.dataset for r in group})
        union, offsets = union_dataset([self.datasets[n] for n in dataset_names])
        offset = {n: o for n, o in zip(dataset_names, offsets)}
        sizes = {n: len(self.datasets[n]) for n in dataset_names}
        total = max(self._total_steps(self.datasets[r.dataset]) for r in group)
        if len({self._total_steps(self.datasets[r.dataset]) for r in group}) > 1:
            raise ValueError("runs trained together need datasets of equal size (same number of steps)")
        params = [self._init_params(r) for r in group]
        graphdef, model_state = nnx.split(self.model)
        tx, run_step = group_program(graphdef, self.model.cfg, self.steering, self.step_config, self.optim,
                                     schedule_steps(self.optim, total), self.mesh, self.rules, self.config.runs_per_chunk)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
        state = TrainState(stacked, jax.vmap(tx.init)(stacked), jnp.zeros(len(group), jnp.int32),
                           jnp.ones(len(group), bool))
        lrs = {g: jnp.asarray([self._learning_rates(r)[g] for r in group], jnp.float32)
               for g in ("factor", "direction", "other")}
        # Committed like the step's outputs, so the first step and the later ones share one compiled program.
        if self.mesh is None:
            state, lrs = jax.device_put((state, lrs), jax.local_devices()[0])
        else:
            state, lrs = jax.tree.map(lambda x: jax.device_put(x, runs_sharding(self.mesh, self.rules, x.shape)),
                                      (state, lrs))
        checkpoints = RunCheckpoints(os.path.join(group_dir, "checkpoints"))
        metrics_path = os.path.join(group_dir, "metrics.jsonl")
        first_step = 0
        if checkpoints.latest_step() is not None:
            state, _ = checkpoints.restore(state)
            first_step = int(checkpoints.latest_step())
        _truncate_metrics(metrics_path, first_step)

        data = GroupData(self.model, self.steering, union, self.config, self.step_config, self.mesh, self.rules)
        meta = {"runs": [dataclasses.asdict(r) for r in group], **self.metadata}
        every = self.config.checkpoint_every
        if every < 0:
            every = total // self.config.epochs  # the steps of one epoch
        packing = _Packing(data, group, sizes, offset, self.config, total) if self.config.pack_length else None
        bar = tqdm(range(first_step, total), desc=f"group {index}", disable=not self.config.progress,
                   initial=first_step, total=total)
        try:
            with open(metrics_path, "a") as log:
                for step in bar:
                    picks = [batch_indices(r.seed, step, sizes[r.dataset], self.config.batch_size) for r in group]
                    indices = np.stack([p[0] + offset[r.dataset] for p, r in zip(picks, group)])  # [K, B]
                    row_mask = np.stack([p[1] for p in picks])
                    batch = packing.gather(indices, row_mask) if packing else data.gather(indices, row_mask)
                    state, metrics = run_step(model_state, state, lrs, batch)
                    metrics = jax.device_get(metrics)
                    for k, run in enumerate(group):
                        log.write(json.dumps({"run": run.name, "step": step,
                                              **{m: _scalar(v[k]) for m, v in metrics.items()}}) + "\n")
                    bar.set_postfix(loss=f"{np.nanmean(metrics['loss']):.3f}", alive=int(metrics["alive"].sum()))
                    if every and (step + 1) % every == 0 and step + 1 < total:
                        log.flush()
                        checkpoints.save(step + 1, state, meta)
            checkpoints.save(total, state, meta)
        finally:  # closed when a step raises too (m10)
            bar.close()
            checkpoints.close()
        summaries = self._finish(group, state, metrics_path)
        write_json(done_file, summaries)  # atomic: another process may read it as soon as it exists
        return summaries

    def _finish(self, group: list[RunSpec], state: TrainState, metrics_path: str) -> dict[str, dict]:
        """Saves each run's steering and returns its summary (final and best loss, diverged flag)."""
        losses: dict[str, list[float]] = {r.name: [] for r in group}
        with open(metrics_path) as f:
            for line in f:
                record = json.loads(line)
                losses[record["run"]].append(record["loss"])
        summaries = {}
        for k, run in enumerate(group):
            params = jax.tree.map(lambda x: x[k], state.params)
            alive = bool(state.alive[k])
            run_dir = os.path.join(self.out_dir, "runs", run.name)
            info = {"run": dataclasses.asdict(run), "diverged": not alive, **self.metadata}
            save_steering(run_dir, self.steering, params, self.model.cfg, info=info)
            finite = [x for x in losses[run.name] if np.isfinite(x)]
            summaries[run.name] = {
                "diverged": not alive, "steps": int(state.step[k]), "final_loss": finite[-1] if finite else None,
                "best_loss": min(finite) if finite else None, "steering": run_dir,
                "learning_rates": self._learning_rates(run), "seed": run.seed, "dataset": run.dataset,
                "init": dict(run.init)}
        return summaries


class _Packing:
    """A group's packed batches: one shape (rows, response slots) that fits every step of every run, planned up
    front from the runs' data orders, so one compiled step serves the whole group and a resumed one."""

    def __init__(self, data: GroupData, group: list[RunSpec], sizes: dict, offset: dict, config: TrainConfig,
                 total: int):
        self.data, self.length = data, config.pack_length
        self.tokens, self.responses = data.example_sizes()
        self.rows_per_part = len(data.arrays[0].tokens)
        planned = [self._examples(*batch_indices(r.seed, step, sizes[r.dataset], config.batch_size), offset[r.dataset])
                   for step in range(total) for r in group]
        self.rows, self.slots = plan_shape([p[1] for p in planned], [p[2] for p in planned], self.length)

    def _examples(self, indices: np.ndarray, row_mask: np.ndarray, offset: int = 0):
        """(sources, tokens, response tokens) [E] of one run's step: positives, then their negatives."""
        parts = len(self.data.arrays)
        sources = np.concatenate([indices + offset + part * self.rows_per_part for part in range(parts)])
        live = np.tile(row_mask, parts)
        return sources, np.where(live, self.tokens[sources], 0), np.where(live, self.responses[sources], 0)

    def gather(self, indices: np.ndarray, row_mask: np.ndarray) -> StepData:
        """Packed StepData [K, P, ...] for per-run example indices [K, B] (offsets already added)."""
        maps = [pack_map(*self._examples(i, m), length=self.length, rows=self.rows, slots=self.slots)
                for i, m in zip(indices, row_mask)]
        return self.data.gather_packed(PackMap(*(np.stack(f) for f in zip(*maps))))


@functools.lru_cache(maxsize=16)
def group_program(graphdef, model_cfg, steering: Steering, step_config: StepConfig, optim: OptimConfig,
                  horizon: int, mesh: Mesh | None = None, rules: ShardingRules = ShardingRules(),
                  runs_per_chunk: int = 0):
    """(optimizer, jit(step over the group's runs)) for a group; cached, so every group of a grid shares one program.

    The runs are vmapped `runs_per_chunk` at a time and the chunks run in a loop inside the program (0 = auto, see
    TrainConfig). The learning rates and the init are data, so runs that differ only in them compile once. The
    train state's buffers are donated. On a mesh, the new state leaves the step laid out by `runs_sharding`, as it
    came in, so the next step reuses the program. `horizon`: the schedule's length (`optim.schedule_steps`).
    """
    labels = param_labels(steering, jax.eval_shape(lambda: steering.init_params(jax.random.key(0), model_cfg)))
    tx = make_optimizer(optim, labels, horizon)
    step_fn = make_train_step(steering, step_config, tx, labels, schedule_fraction(optim, horizon),
                              optim.grad_accum)

    if runs_per_chunk == 0:
        runs_per_chunk = 1 if mesh is None and jax.default_backend() == "cpu" else None

    def group_step(model_state, state, lrs, data):
        model = nnx.merge(graphdef, model_state)
        if runs_per_chunk is None or runs_per_chunk >= state.step.shape[0]:
            state, metrics = jax.vmap(step_fn, in_axes=(None, 0, 0, 0))(model, state, lrs, data)
        else:  # a loop over chunks of runs (lax.map vmaps within a chunk); the same results, bounded memory
            state, metrics = jax.lax.map(lambda run: step_fn(model, *run), (state, lrs, data),
                                         batch_size=runs_per_chunk)
        return _constrain(state, mesh, rules, runs_sharding), _constrain(metrics, mesh, rules, runs_sharding)

    return tx, jax.jit(group_step, donate_argnums=(1,))


def _scalar(value) -> Any:
    value = np.asarray(value)
    return bool(value) if value.dtype == bool else float(value)


def _truncate_metrics(path: str, first_step: int) -> None:
    """Drops metric lines past a resumed checkpoint, so a resumed run never logs a step twice."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line, torn by a kill in the middle of a buffered write
                continue
            if record["step"] < first_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    write_atomic(path, "".join(kept))  # a kill while rewriting never loses the kept lines
