"""The judge-free study on a real model (does PrOSV steer without sacrifice?), one resumable stage per command.

    python experiments/real/study.py plan   --config experiments/real/configs/smollm2_dev.py   # every stage's command
    python experiments/real/study.py run    --config experiments/real/configs/smollm2_dev.py   # all unfinished stages
    python experiments/real/study.py run    --config ... --stages train_prosv_lang,gen_prosv_lang  # some of them
    python experiments/real/study.py status --config ...                                        # done, wall clock

Each stage is one `prosv-jax axbench ...` command (printed by `plan`, runnable on its own) or the study's report.
A finished stage leaves `<out>/stages/<name>.json` (its command and wall clock) and is skipped by the next `run`;
every underlying command resumes by itself (per concept, per training group), so a killed run loses at most the
concept or epoch it was in. Config fields: experiments/real/configs/base.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable

STUDY_CONFIG = "study_config.json"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StageFailed(RuntimeError):
    """A stage's command exited with an error (its own message is printed above)."""


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    what: str
    argv: Callable[[], list[str]]  # the prosv-jax command line, built when the stage runs (it may read earlier stages)
    kind: str = "cli"  # cli: prosv_jax.cli.main(argv) | report: the study's report (experiments/real/report.py)


def _ids(ids) -> str:
    return ",".join(str(int(c)) for c in ids)


def _path(cfg, *parts) -> str:
    return os.path.join(os.path.abspath(cfg.out), *parts)


def _repo_file(path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(REPO, path)


def chosen_detector_layer(cfg) -> int:
    """The evaluator block with the best mean held-out AUROC over the dev concepts (stage detector_layers)."""
    import csv

    best = None
    for layer in cfg.evaluator.layers:
        table = _path(cfg, "detector_layers", f"L{layer}", "detectors.csv")
        if not os.path.isfile(table):
            raise FileNotFoundError(f"{table} not found: run stage detector_layers first")
        with open(table) as f:
            aurocs = [float(r["heldout_auroc"]) for r in csv.DictReader(f)]
        mean = sum(aurocs) / len(aurocs)
        if best is None or mean > best[1]:
            best = (layer, mean)
    return best[0]


def _train_argv(cfg, method) -> list[str]:
    t = cfg.train
    concepts = list(cfg.dev_concepts) if method.concepts == "dev" else list(cfg.concepts)
    overrides = {
        "model.path": cfg.model.name, "model.name": cfg.model.name, "model.dtype": t.dtype,
        "train.param_dtype": t.dtype, "steering.layer": method.layer or cfg.model.layer,
        "data.split_dir": cfg.split, "data.concept_ids": f"[{_ids(concepts)}]",
        "data.max_examples": t.max_examples, "data.max_response": t.max_response,
        "data.simpo_max_response": t.max_response, "train.epochs": t.epochs,
        "train.runs_per_program": 1, "train.progress": False, "grid.seeds": f"[{_ids(t.seeds)}]",
    }
    if method.simpo:
        overrides["data.negatives"] = _path(cfg, "negatives.jsonl")
    overrides.update(dict(method.overrides))
    return (["axbench", "train", "--config", _repo_file(method.config)]
            + [f"--config.{k}={v}" for k, v in overrides.items()] + ["--out", _path(cfg, "train", method.name)])


def _setting(cfg, method) -> str:
    return method.setting or f"{cfg.model.label} L{method.layer or cfg.model.layer}"


def _generate_argv(cfg, method, *, grid: str = "", attack: bool = False) -> list[str]:
    """The answers of `method`: at its learned factor, under the attack, or one half of its factor grid (`grid`:
    "select", every factor on instructions 0-4, or "report", 5-9 at the factor the rated selection half chose)."""
    g = cfg.generation
    folder = _grid_folder(method, grid) if grid else ("attack" if attack else "gen") + "/" + method.name
    label = method.label + (" (factor selected)" if grid else "")
    argv = ["axbench", "robustness" if attack else "generate", "--model", cfg.model.name,
            "--out", _path(cfg, folder), "--method", label, "--setting", _setting(cfg, method),
            "--max-new-tokens", str(g.max_new_tokens), "--dtype", g.dtype, "--seed", str(g.seed),
            "--split", cfg.split]
    if method.name == "prompting":
        return argv + ["--prompting-file", _path(cfg, "prompts.jsonl"), "--concepts", _ids(cfg.concepts),
                       "--batch-size", str(g.batch_size)]
    argv += ["--runs", _path(cfg, "train", method.name)]
    if grid == "select":
        return argv + ["--factor-grid", "--select-half", "--batch-size", str(g.grid_batch_size)]
    if grid == "report":
        return argv + ["--report-half", _path(cfg, _grid_folder(method, "select"), "ratings"),
                       "--batch-size", str(g.batch_size)]
    if attack:
        argv += ["--attack-template"] + (["--factor-scales", cfg.attack.fssv_factor_scales]
                                         if method.positions == "all" else [])
    return argv + ["--batch-size", str(g.batch_size)]


def _judge_argv(cfg, folder: str) -> list[str]:
    return ["axbench", "judge", "--generations", _path(cfg, folder), "--judge", "probe",
            "--detectors", _path(cfg, "detectors"), "--judge-batch-size", str(cfg.judge.batch_size)]


def _sacrifice_argv(cfg, method, *, selected: bool = False) -> list[str]:
    label = method.label + (" (factor selected)" if selected else "")
    name = method.name + ("_selected" if selected else "")
    argv = ["axbench", "sacrifice", "--model", cfg.model.name, "--out", _path(cfg, "sacrifice", name),
            "--method", label, "--n-pairs", str(cfg.sacrifice.n_pairs), "--dtype", cfg.generation.dtype,
            "--split", cfg.split, "--batch-size", str(cfg.sacrifice.batch_size)]
    if method.name == "prompting":
        return argv + ["--prompting-file", _path(cfg, "prompts.jsonl"), "--concepts", _ids(cfg.concepts)]
    argv += ["--runs", _path(cfg, "train", method.name)]
    return argv + (["--factors-from", _path(cfg, "report")] if selected else [])


def stages(cfg) -> list[Stage]:
    """Every stage of the study, in the order they run."""
    dev, main = list(cfg.dev_concepts), list(cfg.concepts)
    e = cfg.evaluator
    out: list[Stage] = []
    for layer in e.layers:
        out.append(Stage(f"detector_layers_L{layer}", f"detectors on the dev concepts at evaluator block {layer}",
                         lambda layer=layer: ["axbench", "detectors", "--model", e.name, "--split", cfg.split,
                                              "--layer", str(layer), "--concepts", _ids(dev), "--max-tokens",
                                              str(e.max_tokens), "--out", _path(cfg, "detector_layers", f"L{layer}")]))
    out.append(Stage("detectors", "a detector per concept at the chosen evaluator block",
                     lambda: ["axbench", "detectors", "--model", e.name, "--split", cfg.split, "--layer",
                              str(chosen_detector_layer(cfg)), "--concepts", _ids(main), "--max-tokens",
                              str(e.max_tokens), "--out", _path(cfg, "detectors")]))
    out.append(Stage("prompts", "the prompting baseline's steering prompts (template)",
                     lambda: ["axbench", "prompts", "--template", "--split", cfg.split, "--concepts", _ids(main),
                              "--out", _path(cfg, "prompts.jsonl")]))
    if any(m.simpo for m in cfg.methods):
        out.append(Stage("negatives", "SimPO's concept-free answers by the unsteered model",
                         lambda: ["axbench", "negatives", "--model", cfg.model.name, "--split", cfg.split,
                                  "--detectors", _path(cfg, "detectors"), "--out", _path(cfg, "negatives.jsonl"),
                                  "--concepts", _ids(main), "--max-examples", str(cfg.train.max_examples),
                                  "--max-new-tokens", str(cfg.train.max_response), "--batch-size",
                                  str(cfg.generation.batch_size), "--dtype", cfg.generation.dtype]))
    main_methods = [m for m in cfg.methods if m.concepts != "dev"]
    dev_methods = [m for m in cfg.methods if m.concepts == "dev"]
    for m in main_methods:
        out += _method_stages(cfg, m)
    out.append(_score_stage(cfg, main_methods, "score", "report"))
    out += _sacrifice_stages(cfg, main_methods)
    for m in dev_methods:
        out += _method_stages(cfg, m)
    if dev_methods:
        out.append(_score_stage(cfg, dev_methods, "score_dev", "report_dev"))
        out += _sacrifice_stages(cfg, dev_methods)
    out.append(Stage("report", "tables, intervals and figures into the results folder",
                     lambda: ["--study", os.path.abspath(cfg.out), "--out", _repo_file(cfg.results)], kind="report"))
    return out


def _grid_folder(m, half: str) -> str:
    return f"gen/{m.name}_grid" + ("_report" if half == "report" else "")


def _folders(m) -> list[str]:
    """The answer folders of a method, in the order they are made: gen/<name> (learned factor), the grid in protocol
    order (gen/<name>_grid: every factor on instructions 0-4; gen/<name>_grid_report: 5-9 at the chosen factor),
    attack/<name>."""
    return ([f"gen/{m.name}"] if m.name != "diffmean" else []) + (
        [_grid_folder(m, "select"), _grid_folder(m, "report")] if m.grid else []) + (
        [f"attack/{m.name}"] if m.attack else [])


def _method_stages(cfg, m) -> list[Stage]:
    """A method's training, answers and their ratings."""
    out = []
    if m.name == "diffmean":
        out.append(Stage("train_diffmean", "DiffMean steerings (mean difference of block-L activations)",
                         lambda: ["axbench", "diffmean", "--model", cfg.model.name, "--split", cfg.split,
                                  "--layer", str(m.layer or cfg.model.layer), "--concepts", _ids(cfg.concepts),
                                  "--out", _path(cfg, "train", "diffmean")]))
    elif m.config:
        out.append(Stage(f"train_{m.name}", f"train {m.label}", lambda: _train_argv(cfg, m)))
    for folder in _folders(m):
        kind = {"gen": "answers", "attack": "answers under the suppression attack"}[folder.split("/")[0]]
        grid = "report" if folder.endswith("_grid_report") else "select" if folder.endswith("_grid") else ""
        half = {"select": ", 14-factor grid on instructions 0-4", "report": ", 5-9 at the chosen factor", "": ""}
        out.append(Stage(folder.replace("/", "_"), f"{kind}, {m.label}{half[grid]}",
                         lambda grid=grid, attack=folder.startswith("attack"): _generate_argv(
                             cfg, m, grid=grid, attack=attack)))
        out.append(Stage("judge_" + folder.replace("/", "_"), f"probe ratings of {folder}",
                         lambda folder=folder: _judge_argv(cfg, folder)))
    return out


def _score_stage(cfg, methods, name: str, report: str) -> Stage:
    folders = [_path(cfg, f, "ratings") for m in methods for f in _folders(m)]
    return Stage(name, "steering scores of the rated answers",
                 lambda: ["axbench", "score", "--ratings", *folders, "--out", _path(cfg, report)])


def _sacrifice_stages(cfg, methods) -> list[Stage]:
    out = []
    for m in methods:
        if m.sacrifice and m.name != "diffmean":
            out.append(Stage(f"sacrifice_{m.name}", f"sacrifice, {m.label}", lambda m=m: _sacrifice_argv(cfg, m)))
        if m.sacrifice and m.grid:
            out.append(Stage(f"sacrifice_{m.name}_selected", f"sacrifice, {m.label} at the selected factor",
                             lambda m=m: _sacrifice_argv(cfg, m, selected=True)))
    return out


def _done_file(cfg, name: str) -> str:
    return _path(cfg, "stages", f"{name}.json")


def run_stage(cfg, stage: Stage) -> None:
    from prosv_jax import cli
    from prosv_jax.files import write_json

    argv = stage.argv()
    print(f"\n=== {stage.name}: {stage.what}\n    {_shown(stage, argv)}", flush=True)
    start = time.time()
    if stage.kind == "report":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import report

        report.main(argv)
    else:
        code = cli.main(argv)
        if code != 0:
            raise StageFailed(f"stage {stage.name} failed (exit {code}); fix the cause and rerun `study.py run` "
                              "(finished stages and concepts are kept)")
    seconds = time.time() - start
    write_json(_done_file(cfg, stage.name), {"stage": stage.name, "argv": argv, "wall_s": round(seconds, 1),
                                             "concepts": list(cfg.concepts),
                                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f"=== {stage.name}: done in {seconds:.1f} s", flush=True)


def _shown(stage: Stage, argv: list[str]) -> str:
    import shlex

    prefix = ["python", "experiments/real/report.py"] if stage.kind == "report" else ["prosv-jax"]
    return shlex.join(prefix + argv)


def is_done(cfg, name: str) -> dict | None:
    """The stage's record when it finished for (at least) the study's current concepts, else None: a study grown by
    concepts reruns every stage, and each command then does only the new concepts."""
    path = _done_file(cfg, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return record if set(cfg.concepts) <= set(record.get("concepts", [])) else None


def load_study_config(path: str, overrides: list[str]):
    from prosv_jax.config import resolve

    cfg = resolve(path, overrides)
    names = [m.name for m in cfg.methods]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: method names must be unique, got {names}")
    if cfg.evaluator.name == cfg.model.name and not cfg.evaluator.allow_same:
        raise ValueError(f"{path}: the evaluator is the steered model ({cfg.model.name}); its own likelihoods would "
                         "rate its answers: set evaluator.name to another model (evaluator.allow_same=True only for "
                         "code tests)")
    unknown = sorted(set(cfg.dev_concepts) - set(cfg.concepts))
    if unknown:
        raise ValueError(f"{path}: dev concepts {unknown} are not among the study's concepts {list(cfg.concepts)}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("plan", "run", "status"))
    parser.add_argument("--config", required=True, help="a study config (experiments/real/configs/*.py)")
    parser.add_argument("--stages", help="comma-separated stage names (default: every stage, in order)")
    parser.add_argument("--redo", action="store_true", help="run the chosen stages even when marked done (each "
                                                             "command still keeps its finished concepts)")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        parser.error(f"unrecognised arguments: {bad} (config overrides look like --config.field=value)")
    try:
        return _act(args, rest, parser)
    except (ValueError, FileNotFoundError) as error:  # a message, not a traceback
        print(f"study: error: {error}", file=sys.stderr)
        return 2
    except StageFailed as error:
        print(f"study: {error}", file=sys.stderr)
        return 1


def _act(args, rest: list[str], parser) -> int:
    cfg = load_study_config(args.config, rest)
    every = stages(cfg)
    chosen = every
    if args.stages:
        names = [s.strip() for s in args.stages.split(",") if s.strip()]
        known = {s.name: s for s in every}
        unknown = [n for n in names if n not in known]
        if unknown:
            parser.error(f"unknown stage(s) {unknown}; stages: {', '.join(known)}")
        chosen = [known[n] for n in names]
    if args.action == "plan":
        from prosv_jax.config import config_text

        print(config_text(cfg))
        for s in chosen:
            try:
                shown = _shown(s, s.argv())
            except FileNotFoundError:
                shown = "(its arguments depend on an earlier stage)"
            print(f"\n# {s.name}: {s.what}\n{shown}")
        return 0
    if args.action == "status":
        for s in chosen:
            done = is_done(cfg, s.name)
            print(f"{s.name:40s} " + (f"done  {done['wall_s']:8.1f} s  {done['finished']}" if done else "-"))
        return 0
    from prosv_jax.config import to_dict
    from prosv_jax.files import write_json

    write_json(_path(cfg, STUDY_CONFIG), to_dict(cfg))  # what the report reads (with the command line's overrides)
    for s in chosen:
        if is_done(cfg, s.name) and not args.redo:
            print(f"=== {s.name}: done (skipped)")
            continue
        run_stage(cfg, s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
