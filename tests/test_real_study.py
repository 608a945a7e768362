"""experiments/real/study.py, the judge-free study, in its quick version (experiments/real/configs/tiny.py): every
stage on the built-in tiny model, first for one concept and then grown to two (finished work is kept), the report's
tables and claims, and the errors a user meets."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "experiments" / "real"
TINY = str(STUDY / "configs" / "tiny.py")
sys.path.insert(0, str(STUDY))

import study  # noqa: E402


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The tiny study run for concept 0, then grown to concepts 0 and 1; the c0 files of the first round."""
    root = tmp_path_factory.mktemp("study")
    old = os.environ.get("PROSV_JAX_CACHE")
    os.environ["PROSV_JAX_CACHE"] = str(root / "cache")
    out, results = root / "out", root / "results"
    common = ["--config", TINY, f"--config.out={out}", f"--config.results={results}"]
    try:
        assert study.main(["run", *common, "--config.concepts=[0]"]) == 0
        first = {name: (out / name).read_bytes() for name in (
            "gen/prosv_lang/c0.jsonl", "gen/fssv_lang_grid/c0.jsonl", "gen/fssv_lang_grid_report/c0.jsonl",
            "gen/fssv_lang_grid/ratings/c0.jsonl", "sacrifice/prosv_lang/c0.json",
            "detectors/c0.json")}
        assert study.main(["run", *common]) == 0
        yield out, results, first, common
    finally:
        if old is None:
            os.environ.pop("PROSV_JAX_CACHE", None)
        else:
            os.environ["PROSV_JAX_CACHE"] = old


def test_every_stage_finishes_and_growing_the_concepts_keeps_finished_work(tiny_study, capsys):
    out, _, first, common = tiny_study
    for name, data in first.items():
        assert (out / name).read_bytes() == data, f"{name} was redone when the study grew"
    assert (out / "gen" / "prosv_lang" / "c1.jsonl").is_file()
    # the grids in protocol order: 14 factors on instructions 0-4, then 5-9 at the factor the ratings chose
    for grid in ("fssv_lang_grid", "diffmean_grid"):
        select = [json.loads(line) for line in open(out / "gen" / grid / "c1.jsonl")]
        chosen = [json.loads(line) for line in open(out / "gen" / f"{grid}_report" / "c1.jsonl")]
        assert len(select) == 14 * 5 and {r["instruction_pos"] for r in select} == set(range(5))
        assert [r["instruction_pos"] for r in chosen] == [5, 6, 7, 8, 9] and len({r["factor"] for r in chosen}) == 1
        assert chosen[0]["factor"] in {r["factor"] for r in select}
    train = json.load(open(out / "train" / "prosv_lang" / "config.json"))
    assert train["data"]["concept_ids"] == [0, 1] and train["data"]["max_examples"] == 6
    cfg = study.load_study_config(TINY, common[2:])
    for stage in study.stages(cfg):
        record = study.is_done(cfg, stage.name)
        assert record is not None and record["concepts"] == [0, 1], stage.name
    capsys.readouterr()
    assert study.main(["run", *common]) == 0  # nothing left to do
    printed = capsys.readouterr().out
    assert printed.count("done (skipped)") == len(study.stages(cfg)) and "done in" not in printed


def test_report_tables_claims_and_figures(tiny_study):
    out, results, _, _ = tiny_study
    summary = json.load(open(results / "summary.json"))
    headline = {r["method"]: r for r in summary["headline"]}
    for method in ("PrOSV Lang", "PrOSV SimPO", "FSSV Lang", "FSSV Lang (factor selected)",
                   "DiffMean (factor selected)", "Prompting", "PrOSV Lang [suppression]",
                   "FSSV Lang x0.5 [suppression]"):
        assert headline[method]["concepts"] == 2, method
    assert headline["PrOSV Lang"]["sacrifice"] != "-" and headline["PrOSV Lang [suppression]"]["sacrifice"] == "-"
    assert {c["verdict"] for c in summary["claims"]} <= {"holds", "reversed", "not resolved", "not measured"}
    assert all(c["concepts"] == 2 for c in summary["claims"])
    dev = {(r["method"], r["setting"]): r for r in summary["dev"]}
    assert dev[("PrOSV Lang, factor lr x10", "tiny L1 dev")]["concepts"] == 1  # dev-only variant: concept 0

    sacrifice = read_csv(results / "sacrifice.csv")
    methods = {r["method"] for r in sacrifice}
    assert {"PrOSV Lang", "FSSV Lang (factor selected)", "DiffMean (factor selected)", "Prompting"} <= methods
    for r in sacrifice:
        assert float(r["sacrifice"]) == pytest.approx(float(r["nll_steered"]) - float(r["nll_unsteered"]))
    scores = json.load(open(out / "report" / "scores.json"))
    chosen = {g["method"]: g["per_concept"] for g in scores["groups"] if g["factor_selection"]}
    for r in sacrifice:
        if r["method"] in chosen:  # measured at the factor that the factor selection chose
            assert float(r["factor"]) == pytest.approx(chosen[r["method"]][r["concept_id"]]["chosen_factor"])

    answers = read_csv(results / "per_answer.csv")
    assert answers and all(0.0 <= float(r["p_concept"]) <= 1.0 for r in answers)
    assert {r["factor_scale"] for r in answers if r["method"] == "FSSV Lang (factor selected)"} >= {"0.1", "4.0"}
    detectors = read_csv(results / "detectors.csv")
    assert {r["evaluator_block"] for r in detectors} == {"0", "1", "chosen"}
    assert all(0.0 <= float(r["heldout_auroc"]) <= 1.0 for r in detectors)
    stages = read_csv(results / "stages.csv")
    assert {r["stage"] for r in stages} >= {"detectors", "train_prosv_lang", "gen_prosv_lang", "score"}
    for figure in ("concept_vs_sacrifice.png", "factor_sweeps.png"):
        assert (results / figure).read_bytes()[:4] == b"\x89PNG"
    assert "## PrOSV Lang" in (results / "examples.md").read_text()
    prompts = [json.loads(line) for line in open(out / "prompts.jsonl")]
    assert [p["concept_id"] for p in prompts] == [0, 1]
    assert all("references to specific dates" in p["prompt"] for p in prompts[:1])


def test_a_concept_with_a_weak_detector_is_reported_apart(tiny_study, tmp_path):
    """With the AUROC bar between the two concepts' detectors, the weaker concept leaves the headline and the claims
    and gets its own table."""
    import report

    out, results, _, _ = tiny_study
    aurocs = {int(r["concept_id"]): float(r["heldout_auroc"]) for r in read_csv(results / "detectors.csv")
              if r["evaluator_block"] == "chosen"}
    weak, strong = sorted(aurocs, key=aurocs.get)
    if aurocs[weak] == aurocs[strong]:
        pytest.fail(f"the tiny detectors tie ({aurocs}): no bar separates them")
    bar = (aurocs[weak] + aurocs[strong]) / 2
    assert report.main(["--study", str(out), "--out", str(tmp_path), "--min-auroc", str(bar)]) == 0
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["flagged_concepts"] == [weak] and summary["min_auroc"] == bar
    assert all(r["concepts"] == 1 for r in summary["headline"]) and summary["headline"]
    assert all(r["concepts"] == 1 for r in summary["headline_flagged"]) and summary["headline_flagged"]
    assert all(c["concepts"] < 2 for c in summary["claims"])  # one trusted concept: no paired interval
    text = (tmp_path / "summary.md").read_text()
    assert f"Concepts [{weak}] are left out" in text and "Concepts with a weak detector" in text


def test_plan_prints_every_command_and_bad_input_is_named(tiny_study, capsys, tmp_path):
    _, _, _, common = tiny_study
    assert study.main(["plan", *common]) == 0
    printed = capsys.readouterr().out
    assert "prosv-jax axbench train --config" in printed and "--factor-grid --select-half" in printed
    assert "--report-half" in printed
    assert "prosv-jax axbench sacrifice" in printed and "python experiments/real/report.py" in printed
    assert "!!python" not in printed and "- attack: true" in printed  # the config's methods print as plain YAML
    with pytest.raises(SystemExit):
        study.main(["run", *common, "--stages", "train_nothing"])
    assert "unknown stage(s) ['train_nothing']" in capsys.readouterr().err
    assert study.main(["plan", *common, "--config.dev_concepts=[5]"]) == 2
    assert "dev concepts [5] are not among the study's concepts [0, 1]" in capsys.readouterr().err
    assert study.main(["plan", *common, "--config.no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["plan", *common, "--layers=3"])
    assert "config overrides look like --config.field=value" in capsys.readouterr().err
    assert study.main(["plan", *common, "--config.evaluator.allow_same=False"]) == 2
    assert "the evaluator is the steered model (builtin)" in capsys.readouterr().err
    fresh = ["--config", TINY, f"--config.out={tmp_path / 'fresh'}"]
    assert study.main(["run", *fresh, "--stages", "detectors"]) == 2  # its evaluator block is not chosen yet
    assert "run stage detector_layers first" in capsys.readouterr().err
    assert study.main(["run", *fresh, "--stages", "gen_prosv_lang"]) == 1  # nothing trained yet
    assert "stage gen_prosv_lang failed" in capsys.readouterr().err
    import report

    with pytest.raises(FileNotFoundError, match="is not a study folder"):
        report.main(["--study", str(tmp_path), "--out", str(tmp_path / "r")])


def test_sacrifice_stage_equals_the_direct_computation(tiny_study):
    """The stage's row for a steering equals `sacrifice()` on the same model, steering and GPT-4 answers."""
    from prosv_jax.evaluation.generation import Generator
    from prosv_jax.evaluation.runs import find_runs
    from prosv_jax.evaluation.sacrifice import reference_pairs, sacrifice

    out, results, _, _ = tiny_study
    rows = {(r["method"], r["concept_id"]): r for r in read_csv(results / "sacrifice.csv")}
    gen = Generator("builtin", "float32", 4)
    for run in find_runs(out / "train" / "prosv_lang"):
        steering, params = gen.load_steering(run.path)
        direct = sacrifice(gen.model, gen.tokenizer, steering, params, reference_pairs(4), batch_size=4)
        row = rows[("PrOSV Lang", str(run.concept_id))]
        assert float(row["sacrifice"]) == pytest.approx(direct["sacrifice"], abs=1e-6)
        assert float(row["nll_unsteered"]) == pytest.approx(direct["nll_unsteered"], abs=1e-6)
