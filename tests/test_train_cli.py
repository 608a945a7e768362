"""`prosv-jax train`: config files and overrides, AxBench data, end-to-end training, kill-and-resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
TINY_PROSV = str(CONFIGS / "tiny_prosv.py")
TINY_FSSV = str(CONFIGS / "tiny_fssv.py")
SPLIT = "bundled:concept10"  # AxBench's concept10 prod_2b_l10_v1 split, shipped with prosv-jax
# The released rows of method.md's table (the smollm2_* configs are those rows moved to SmolLM2's width: see
# tests/test_real_models.py).
PAPER_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.py")
                       if p.stem not in ("base", "tiny_prosv", "tiny_fssv") and not p.stem.startswith("smollm2"))


@pytest.fixture(scope="module", autouse=True)
def builtin_cache(tmp_path_factory):
    """The built-in model is built once into a temporary cache, shared with subprocesses through the env."""
    old = os.environ.get("PROSV_JAX_CACHE")
    os.environ["PROSV_JAX_CACHE"] = str(tmp_path_factory.mktemp("prosv_cache"))
    yield
    if old is None:
        os.environ.pop("PROSV_JAX_CACHE", None)
    else:
        os.environ["PROSV_JAX_CACHE"] = old


# The training tests share one grid (two factor learning rates, vmapped together), so they compile once.
GRID = ["--config", TINY_FSSV, "--config.grid.factor_lrs=[1, 10]", "--config.train.runs_per_program=2"]
NAMES = ["c0-s42-flr1-dlr0.04-b2-c1", "c0-s42-flr10-dlr0.04-b2-c1"]


def cli(*args: str) -> int:
    from prosv_jax.cli import main

    return main(["train", *args, "--config.train.progress=False"])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("groups/*/metrics.jsonl")) for line in open(path)]


def params_of(out: Path) -> dict[str, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    return {run.name: load_file(run / "params.safetensors") for run in sorted((out / "runs").iterdir())}


# --- configs ---------------------------------------------------------------------------------------------------


def test_overrides_coerce_types_parse_lists_and_save(tmp_path):
    from prosv_jax.config import resolve, save_config

    config = resolve(TINY_PROSV, ["--config.optim.factor_lr=10", "--config.train.epochs=3",
                                  "--config.grid.seeds=[1, 2]", "--config.steering.positions=f1+l1",
                                  "--config.optim.clip_norm=None", "--config.steering.unit_norm=true",
                                  "--config.data.concept_ids=(0,3)", "--config.optim.eps=1e-6"])
    assert config.optim.factor_lr == 10.0 and isinstance(config.optim.factor_lr, float)
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert list(config.grid.seeds) == [1, 2] and list(config.data.concept_ids) == [0, 3]
    assert config.steering.positions == "f1+l1" and config.steering.unit_norm is True
    assert config.optim.clip_norm is None and config.optim.eps == 1e-6
    assert config.data.split_dir == SPLIT
    path = save_config(config, tmp_path)
    saved = json.load(open(path))
    assert saved["optim"]["factor_lr"] == 10.0 and saved["grid"]["seeds"] == [1, 2]
    assert (tmp_path / "config.txt").read_text().startswith("data:")
    assert yaml.safe_load((tmp_path / "config.txt").read_text()) == saved  # plain YAML, the same fields as the JSON


@pytest.mark.parametrize("override, message", [
    ("--config.optim.factr_lr=1", ["'optim.factr_lr'", "factor_lr", "direction_lr"]),
    ("--config.nope=1", ["'nope'", "optim", "steering"]),
    ("--config.train.epochs=abc", ["'train.epochs'", "'abc'"]),
    ("--config.optim.factor_lr=fast", ["'optim.factor_lr'", "'fast'"]),
    ("--config.grid.seeds=3", ["'grid.seeds'", "list"]),
    ("--config.steering.unit_norm=maybe", ["'steering.unit_norm'", "true or false"]),
])
def test_bad_overrides_are_named(override, message):
    from prosv_jax.config import resolve

    with pytest.raises(ValueError) as error:
        resolve(TINY_PROSV, [override])
    for part in message:
        assert part in str(error.value)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_load_and_need_a_model_path(name, tmp_path, capsys):
    from prosv_jax.config import resolve

    config = resolve(str(CONFIGS / name))
    assert config.model.path == ""
    assert cli("--config", str(CONFIGS / name), "--out", str(tmp_path / "out")) == 2
    assert f"model.path is not set: pass --config.model.path=/path/to/{config.model.name}" in capsys.readouterr().err
    if config.objective == "simpo":  # with a model, SimPO still needs the negatives file
        assert cli("--config", str(CONFIGS / name), "--out", str(tmp_path / "out"), "--config.model.path=builtin",
                   f"--config.data.split_dir={SPLIT}", "--config.steering.layer=1") == 2
        assert "needs concept-free responses" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written before the config is usable


# method.md's table of released hyperparameters, copied by hand: (config file, layer, objective, positions, beta,
# eta_alpha, c, eta_v, epochs, batch, grad-accum).
RELEASED = [
    ("gemma2_2b_l10_lang_fssv.py", 10, "lang", "all", 2, 1, 1, 4e-2, 12, 12, 1),
    ("gemma2_2b_l10_lang_prosv.py", 10, "lang", "f2+l2", 4, 10, 8, 4e-2, 12, 12, 1),
    ("gemma2_2b_l10_simpo_fssv.py", 10, "simpo", "all", 2, 0.1, 1, 4e-2, 12, 6, 1),
    ("gemma2_2b_l10_simpo_prosv.py", 10, "simpo", "f2+l2", 4, 20, 8, 4e-2, 12, 6, 1),
    ("gemma2_9b_l20_lang_fssv.py", 20, "lang", "all", 2, 0.1, 8, 4e-2, 18, 12, 1),
    ("gemma2_9b_l20_lang_prosv.py", 20, "lang", "f2+l2", 2, 0.1, 8, 4e-2, 12, 12, 1),
    ("gemma2_9b_l20_simpo_prosv.py", 20, "simpo", "f2+l2", 2, 10, 8, 8e-2, 12, 6, 1),
    ("gemma3_12b_l22_lang_prosv.py", 22, "lang", "f2+l2", 1, 1, 8, 8e-2, 24, 6, 1),
    ("qwen25_32b_l32_lang_prosv.py", 32, "lang", "f2+l2", 2, 10, 8, 4e-2, 12, 6, 1),
    ("qwen25_32b_l32_simpo_prosv.py", 32, "simpo", "f2+l2", 1, 10, 8, 8e-2, 6, 3, 2),
]


def test_every_released_row_has_its_config():
    assert sorted(row[0] for row in RELEASED) == PAPER_CONFIGS


@pytest.mark.parametrize("row", RELEASED, ids=[row[0] for row in RELEASED])
def test_released_rows(row):
    """M9: every row of method.md's table, and the reference protocol around it (seed 42, Adam, clip v at 1, linear
    decay over the reference's horizon, Lang uncut, SimPO cut at 128, bfloat16)."""
    from prosv_jax.config import resolve

    c = resolve(str(CONFIGS / row[0]))
    assert (c.steering.layer, c.objective, c.steering.positions, c.steering.beta, c.optim.factor_lr, c.steering.c,
            c.optim.direction_lr, c.train.epochs, c.train.batch_size, c.optim.grad_accum) == row[1:]
    assert (list(c.grid.seeds), c.steering.init, c.steering.unit_norm, c.steering.train_factor) == ([42], "uniform",
                                                                                                   False, True)
    assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.clip_norm, list(c.optim.clip_groups)) == (
        0.9, 0.999, 1e-8, 1.0, ["direction"])
    assert (c.optim.schedule, c.optim.warmup_steps, c.optim.decay_over) == ("linear", 0, "micro_steps")
    assert (c.data.max_response, c.data.simpo_max_response) == (0, 128)
    assert (c.model.dtype, c.train.param_dtype) == ("bfloat16", "bfloat16")


def test_run_grid_sweeps_the_inits_own_size():
    """m5: the uniform init sweeps c, the normal init lam; giving the other one is an error (it would do nothing)."""
    from prosv_jax.commands.train import make_runs
    from prosv_jax.config import resolve

    runs = make_runs(resolve(TINY_PROSV, ["--config.steering.init=normal", "--config.grid.lams=[0.5, 2]"]), [0])
    assert [(r.name, dict(r.init)) for r in runs] == [
        ("c0-s42-flr1-dlr0.04-b4-lam0.5", {"beta": 4.0, "lam": 0.5}),
        ("c0-s42-flr1-dlr0.04-b4-lam2", {"beta": 4.0, "lam": 2.0})]
    runs = make_runs(resolve(TINY_PROSV, ["--config.grid.cs=[1, 8]"]), [0])
    assert [dict(r.init)["c"] for r in runs] == [1.0, 8.0] and runs[0].name.endswith("-c1")
    with pytest.raises(ValueError, match="grid.cs has no effect with steering.init='normal'; sweep grid.lams"):
        make_runs(resolve(TINY_PROSV, ["--config.steering.init=normal", "--config.grid.cs=[1, 8]"]), [0])
    with pytest.raises(ValueError, match="grid.lams has no effect with steering.init='uniform'"):
        make_runs(resolve(TINY_PROSV, ["--config.grid.lams=[1.0]"]), [0])


def test_diverged_runs_are_left_out_of_evaluation_with_a_warning(tmp_path):
    """m9: `axbench generate` / `utility` leave out runs the trainer flagged as diverged, and say so."""
    from prosv_jax.evaluation.runs import find_runs

    for name, diverged in (("c0-a", False), ("c0-b", True), ("c1-a", True)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "steering.json").write_text(json.dumps({"info": {"diverged": diverged}}))
    said = []
    assert [r.name for r in find_runs(tmp_path, log=said.append)] == ["c0-a"]
    assert said == ["warning: leaving out 2 run(s) that diverged in training: ['c0-b', 'c1-a'] "
                    "(--include-diverged to evaluate them)"]
    assert [(r.name, r.diverged) for r in find_runs(tmp_path, include_diverged=True)] == [
        ("c0-a", False), ("c0-b", True), ("c1-a", True)]
    (tmp_path / "runs" / "c0-a" / "steering.json").write_text(json.dumps({"info": {"diverged": True}}))
    with pytest.raises(ValueError, match="every trained steering diverged"):
        find_runs(tmp_path, log=said.append)


# --- data --------------------------------------------------------------------------------------------------------


def test_axbench_positives_examples_and_negatives(tmp_path, concept10_split):
    from transformers import AutoTokenizer

    from prosv_jax.models.tiny import builtin_model_dir
    from prosv_jax.data import axbench

    pairs = axbench.concept_positives(SPLIT, 3)
    assert len(pairs) == 72 and all(i and o for i, o in pairs)
    assert axbench.concept_positives(concept10_split / "generate", 3) == pairs
    assert axbench.concept_positives(concept10_split, 3) == pairs
    # the bundled split: AxBench's concept10 prod_2b_l10_v1 (10 concepts x 72 positives, 216 shared negatives)
    assert axbench.concept_ids(SPLIT) == list(range(10))
    assert axbench.load_metadata(SPLIT)[0]["concept"] == "references to specific dates and publication information"
    import pandas as pd

    table = pd.read_parquet(concept10_split / "generate" / "train_data.parquet")
    assert (table.category == "negative").sum() == 216 and set(table[table.concept_id < 0].category) == {"negative"}
    assert table[table.category == "positive"].groupby("concept_id").size().tolist() == [72] * 10
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
    examples = axbench.lang_examples(tokenizer, pairs[:4], max_response=20)
    for (prompt, response), (instruction, output) in zip(examples, pairs):
        assert prompt[0] == tokenizer.bos_token_id and prompt.count(tokenizer.bos_token_id) == 1
        assert response == tokenizer(output, add_special_tokens=False)["input_ids"][:20]
        assert tokenizer.eos_token_id not in response
    with pytest.raises(ValueError, match=r"unknown concept id 10 .*valid ids are 0\.\.9"):
        axbench.concept_positives(SPLIT, 10)
    negatives = tmp_path / "negatives.jsonl"
    rows = [{"concept_id": 3, "instruction": i, "output": "plain answer"} for i, _ in pairs]
    negatives.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    with pytest.raises(ValueError, match="no concept-free response for 1 of the 72 instructions of concept 3"):
        axbench.concept_negatives(negatives, 3, pairs)
    negatives.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]))
    assert axbench.concept_negatives(negatives, 3, pairs) == [(i, "plain answer") for i, _ in pairs]
    with pytest.raises(ValueError, match="SimPO objective needs concept-free responses"):
        axbench.require_negatives("")


def test_responses_are_cut_as_the_reference_cuts_them(tmp_path):
    """Lang trains on whole responses by default (the reference's Lang path), data.max_response keeps a cut; SimPO cuts
    positives and negatives at data.simpo_max_response = 128 (the reference's SimPO path). method.md section 3."""
    from transformers import AutoTokenizer

    from prosv_jax.models.tiny import builtin_model_dir
    from prosv_jax.commands.train import build_datasets
    from prosv_jax.config import resolve
    from prosv_jax.data import axbench

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
    pairs = axbench.concept_positives(SPLIT, 0)
    full = np.array([len(tokenizer(o, add_special_tokens=False)["input_ids"]) for _, o in pairs])
    assert (full > 128).sum() > 10, full  # the cut matters on this data

    def lengths(*overrides):
        datasets, _ = build_datasets(resolve(TINY_PROSV, list(overrides)), tokenizer)
        d = datasets["c0"]
        return (d.positives.target_mask.sum(1),
                None if d.negatives is None else d.negatives.target_mask.sum(1))

    pos, neg = lengths()
    np.testing.assert_array_equal(pos, full)
    assert neg is None
    np.testing.assert_array_equal(lengths("--config.data.max_response=64")[0], np.minimum(full, 64))
    negatives = tmp_path / "negatives.jsonl"
    answer = " ".join(["plain"] * 300)
    negatives.write_text("".join(json.dumps({"concept_id": 0, "instruction": i, "output": answer}) + "\n"
                                 for i, _ in pairs))
    pos, neg = lengths("--config.objective=simpo", f"--config.data.negatives={negatives}")
    np.testing.assert_array_equal(pos, np.minimum(full, 128))
    n_neg = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    assert n_neg > 128 and (neg == 128).all()


def test_bad_input_is_a_clear_cli_error(tmp_path, capsys, concept10_split):
    import pandas as pd

    out = str(tmp_path / "out")
    assert cli("--config", TINY_PROSV, "--out", out, "--config.data.concept_ids=[99]") == 2
    assert "unknown concept id 99" in capsys.readouterr().err
    broken = tmp_path / "broken" / "generate"
    broken.mkdir(parents=True)
    (broken / "metadata.jsonl").write_text((concept10_split / "generate" / "metadata.jsonl").read_text())
    pd.read_parquet(concept10_split / "generate" / "train_data.parquet").drop(columns=["category"]).to_parquet(
        broken / "train_data.parquet")
    assert cli("--config", TINY_PROSV, "--out", out, f"--config.data.split_dir={broken.parent}") == 2
    err = capsys.readouterr().err
    assert "missing column(s) ['category']" in err and "train_data.parquet" in err
    assert cli("--config", TINY_PROSV, "--out", out, "--config.objective=simpo") == 2
    assert "needs concept-free responses" in capsys.readouterr().err
    assert cli("--config", TINY_PROSV, "--out", out, "--config.optim.factr_lr=3") == 2
    assert "unknown config field 'optim.factr_lr'" in capsys.readouterr().err
    assert cli("--config", TINY_PROSV, "--out", out, "--config.steering.positions=middle") == 2
    assert "does not parse" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("--config.train.epochs=None", "'train.epochs' is None: it must be an integer >= 1"),
    ("--config.train.batch_size=0", "'train.batch_size' is 0: it must be an integer >= 1"),
    ("--config.data.max_response=-3", "'data.max_response' is -3: it must be an integer >= 0"),
    ("--config.optim.clip_norm=0", "'optim.clip_norm' is 0.0: it must be None (no clipping) or a number > 0"),
    ("--config.optim.b2=1.0", "'optim.b2' is 1.0: it must be a number in [0, 1)"),
    ("--config.train.prefix_cache=gpu", "'train.prefix_cache' is 'gpu': it must be one of 'device', 'host', 'off'"),
    ("--config.grid.seeds=[1, -2]", "'grid.seeds' is [1, -2]"),
    ("--config.steering.layer=99", "'steering.layer' is 99, but"),  # the built-in model has 4 blocks
])
def test_bad_config_values_are_one_line_errors_before_anything_loads(override, message, tmp_path, capsys,
                                                                     monkeypatch):
    """M6: each bad value is refused up front (exit 2, one line naming the field, no traceback, nothing written);
    M5: nothing else is caught as a user error."""
    import prosv_jax.commands.train as train

    def no_data(*args, **kwargs):
        raise AssertionError("the data must not be read before the config is checked")

    monkeypatch.setattr(train, "build_datasets", no_data)
    out = tmp_path / "out"
    assert cli("--config", TINY_PROSV, "--out", str(out), override) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# --- training ----------------------------------------------------------------------------------------------------


def test_train_end_to_end(tmp_path, capsys):
    from prosv_jax.interventions import SteeringVector, load_steering

    out = tmp_path / "out"
    # Two runs (two factor learning rates) vmapped in one program, 2 epochs of 6 steps.
    assert cli(*GRID, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    names = NAMES
    for name in names:
        assert name in printed
    assert "loss curves:" in printed and "final loss" in printed
    config = json.load(open(out / "config.json"))
    assert config["optim"]["factor_lr"] == 1.0 and config["out_dir"] == str(out)
    records = metrics(out)
    assert len(records) == 2 * 12
    for name in names:
        mine = [r for r in records if r["run"] == name]
        assert [r["step"] for r in mine] == list(range(12))
        for key in ("loss", "alpha/layer1", "v_norm/layer1", "grad_norm/factor", "grad_norm/direction",
                    "lr/factor", "lr/direction", "alive"):
            assert key in mine[0], key
        losses = np.array([r["loss"] for r in mine])
        assert np.all(np.isfinite(losses)) and losses[6:].mean() < losses[:6].mean() - 0.02, losses
        steering, params, spec = load_steering(out / "runs" / name)
        assert isinstance(steering.sites[0].kind, SteeringVector) and str(steering.sites[0].positions) == "all"
        assert params["layer1"]["v"].shape == (128,) and not spec["info"]["diverged"]
    assert mine[0]["lr/factor"] == 10.0 and mine[0]["lr/direction"] == pytest.approx(0.04)
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    summary = json.load(open(out / "summary.json"))
    assert set(summary) == set(names)
    # Rerunning a finished output folder trains nothing and reprints the results; another config is refused.
    assert cli(*GRID, "--out", str(out)) == 0
    assert len(metrics(out)) == 24
    assert cli("--config", TINY_FSSV, "--out", str(out)) == 2
    assert "holds results of another config" in capsys.readouterr().err


def _checkpoint_steps(out: Path) -> list[int]:
    folder = out / "groups" / "group-0000" / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


# Runs `prosv-jax train ARGS` with a hook that pauses the training after its first checkpoint (and says so in the
# marker file), so the test kills it at a known step however fast the device is (M13: no race with the training).
PAUSING_TRAIN = """
import sys, threading
from prosv_jax.training.checkpoint import RunCheckpoints

save = RunCheckpoints.save

def pausing_save(self, step, state, metadata):
    save(self, step, state, metadata)
    open(sys.argv[1], "w").write(str(step))
    threading.Event().wait()  # until killed

RunCheckpoints.save = pausing_save
from prosv_jax.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, capsys):
    args = [*GRID, "--config.train.checkpoint_every=2"]  # 12 steps, a checkpoint every 2
    killed = tmp_path / "killed"
    marker = tmp_path / "paused"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_TRAIN, str(marker), "train", *args, "--out", str(killed),
                             "--config.train.progress=False"], env=env, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600  # a safety net against a hang, not a speed requirement
        while not marker.exists():  # the training pauses once its first checkpoint is written
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the training wrote no checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "groups" / "group-0000" / "done.json").exists()
    assert _checkpoint_steps(killed) == [2] and marker.read_text() == "2"

    assert cli(*args, "--out", str(killed)) == 0  # the same command again: resumes
    assert "resuming" in capsys.readouterr().out
    reference = tmp_path / "reference"
    assert cli(*args, "--out", str(reference)) == 0

    resumed_records, reference_records = metrics(killed), metrics(reference)
    for name in NAMES:  # every step exactly once, with the losses of the uninterrupted run
        mine = [r for r in resumed_records if r["run"] == name]
        assert [r["step"] for r in mine] == list(range(12))
        np.testing.assert_allclose([r["loss"] for r in mine],
                                   [r["loss"] for r in reference_records if r["run"] == name], atol=1e-6)
    got, want = params_of(killed), params_of(reference)
    assert set(got) == set(want) == set(NAMES)
    for name in want:
        for key in ("layer1/alpha", "layer1/v"):
            np.testing.assert_allclose(got[name][key], want[name][key], atol=1e-6, rtol=0)


def test_loss_plot_marks_diverged_runs_and_skips_torn_lines(tmp_path):
    from prosv_jax.training.plots import loss_curves, plot_loss_curves, read_metrics
    from prosv_jax.training.trainer import _truncate_metrics

    group = tmp_path / "groups" / "group-0000"
    group.mkdir(parents=True)
    lines = []
    for step in range(6):
        lines.append({"run": "ok", "step": step, "loss": 6.0 / (step + 1), "alive": True})
        bad = step < 3
        lines.append({"run": "blown", "step": step, "loss": 5.0 if bad else float("nan"), "alive": bad})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (group / "metrics.jsonl").write_text(text + '{"run": "ok", "step": 6, "lo')  # torn by a kill
    runs = read_metrics(tmp_path)
    assert [r["step"] for r in runs["ok"]] == list(range(6))
    # m15: what the plot draws: the diverged run dashed, labelled, cut before its first dead step, marked at its end
    assert loss_curves(runs) == [
        {"label": "blown (diverged)", "steps": [0, 1, 2], "losses": [5.0] * 3, "style": "--", "end_marker": True},
        {"label": "ok", "steps": list(range(6)), "losses": [6.0 / (s + 1) for s in range(6)], "style": "-",
         "end_marker": False}]
    png = Path(plot_loss_curves(tmp_path)).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    _truncate_metrics(str(group / "metrics.jsonl"), 4)  # resuming at step 4 drops later and torn lines
    kept = [json.loads(line) for line in open(group / "metrics.jsonl")]
    assert sorted({r["step"] for r in kept}) == [0, 1, 2, 3] and len(kept) == 8


def test_a_train_folder_grows_by_concepts_and_max_examples_caps_each(tmp_path, capsys):
    """data.max_examples trains on each concept's first N positives; a finished folder given more concepts after its
    own (same order) trains only the new ones; any other change of the concept list is refused."""
    out = tmp_path / "out"
    small = ["--config", TINY_PROSV, "--config.data.max_examples=6", "--config.train.epochs=1",
             "--config.train.runs_per_program=1", "--out", str(out)]
    assert cli(*small, "--config.data.concept_ids=[0]") == 0
    first = (out / "runs" / "c0-s42-flr1-dlr0.04-b4-c8" / "params.safetensors").read_bytes()
    assert [r["step"] for r in metrics(out)] == [0]  # 6 examples, batch 12: one step
    assert cli(*small, "--config.data.concept_ids=[0, 1]") == 0
    assert "resuming in" in capsys.readouterr().out
    assert (out / "runs" / "c0-s42-flr1-dlr0.04-b4-c8" / "params.safetensors").read_bytes() == first
    assert (out / "runs" / "c1-s42-flr1-dlr0.04-b4-c8" / "steering.json").is_file()
    assert cli(*small, "--config.data.concept_ids=[1, 0, 2]") == 2
    assert "fields ['data.concept_ids'] differ" in capsys.readouterr().err
