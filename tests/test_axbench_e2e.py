"""AxBench end to end on concept10 with the built-in tiny model and a real chat-completions judge on 127.0.0.1.

Data: the concept10 split and AlpacaEval instructions bundled with prosv-jax (nothing outside the repository).
Every stage runs through the CLI (`prosv_jax.cli.main`): train (2 concepts, 1 epoch), generate (trained factor,
a factor sweep, the prompting baseline), judge (with injected 429s, a 500 and a timeout; the rerun is free),
robustness (suppression attack at two factor scales), utility, score (checked against a hand computation from the
ratings files). Bad input: a missing column, an unknown concept id, an empty split, a refusing judge endpoint.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from judge_server import JudgeServer

REPO = Path(__file__).resolve().parents[1]
SPLIT = "bundled:concept10"
TINY_PROSV = str(REPO / "experiments" / "configs" / "tiny_prosv.py")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
KEY = "sk-test-e2e-secret-0123456789"
SETTING = "tiny L1"
GEN_ARGS = ["--model", "builtin", "--max-new-tokens", "16", "--batch-size", "10", "--setting", SETTING]  # bundled
# instructions
FAST_JUDGE = ["--backoff-base", "0.01", "--max-retries", "3", "--timeout", "2", "--judge-model", "test-judge"]


def cli(*args) -> int:
    from prosv_jax.cli import main

    return main([str(a) for a in args])


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


def write_jsonl(path, rows) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def hm(c, i, f) -> float:
    return 0.0 if 0 in (c, i, f) else 3 / (1 / c + 1 / i + 1 / f)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The trained steerings (2 concepts) and the environment of every stage."""
    root = tmp_path_factory.mktemp("axbench")
    saved = {k: os.environ.get(k) for k in ("PROSV_JAX_CACHE", "PROSV_JUDGE_API_KEY")}
    os.environ["PROSV_JAX_CACHE"] = str(root / "cache")
    os.environ["PROSV_JUDGE_API_KEY"] = KEY
    train = root / "train"
    assert cli("axbench", "train", "--config", TINY_PROSV, "--config.data.concept_ids=[0,1]",
               "--config.train.epochs=1", "--config.train.progress=False", "--out", train) == 0
    yield {"root": root, "train": train}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _hand_scores(rating_dir: Path) -> dict:
    """{(method, attack): (overall, {cid: score})} from the ratings files alone (factor selection for sweeps)."""
    recs = [r for p in sorted(rating_dir.glob("c*.jsonl")) for r in read_jsonl(p)]
    groups = defaultdict(list)
    for r in recs:
        groups[(r["method"], r["attack"])].append(r)
    out = {}
    for key, rs in groups.items():
        per = {}
        for cid in sorted({r["concept_id"] for r in rs}):
            mine = [r for r in rs if r["concept_id"] == cid]
            score = lambda r: hm(*(r["ratings"][f] for f in ("concept", "instruction", "fluency")))  # noqa: E731
            if mine[0]["mode"] == "sweep":
                factors = sorted({r["factor"] for r in mine})
                sel = {f: sum(score(r) for r in mine if r["factor"] == f and r["instruction_pos"] < 5) / 5
                       for f in factors}
                best = next(f for f in factors if sel[f] == max(sel.values()))
                per[cid] = sum(score(r) for r in mine if r["factor"] == best and r["instruction_pos"] >= 5) / 5
            else:
                per[cid] = sum(score(r) for r in mine) / len(mine)
        out[key] = (sum(per.values()) / len(per), per)
    return out


def test_pipeline(env):
    root, train = env["root"], env["train"]
    gen = root / "gen"
    # --- generate: the trained factor, a factor sweep, the prompting baseline
    assert cli("axbench", "generate", *GEN_ARGS, "--runs", train, "--out", gen / "prosv", "--method", "PrOSV") == 0
    assert cli("axbench", "generate", *GEN_ARGS, "--runs", train, "--out", gen / "sweep", "--method", "SV sweep",
               "--factor", "0,8", "--factor", "16") == 0
    prompts = root / "prompting.jsonl"
    write_jsonl(prompts, [{"concept_id": c, "prompt": f"Mention concept {c}."} for c in (0, 1)])
    assert cli("axbench", "generate", *GEN_ARGS, "--prompting-file", prompts, "--split", SPLIT, "--concepts", "0,1",
               "--out", gen / "prompting") == 0
    recs = read_jsonl(gen / "prosv" / "c0.jsonl")
    assert len(recs) == 10 and [r["instruction_pos"] for r in recs] == list(range(10))
    from prosv_jax.evaluation import load_alpaca_instructions, sample_instructions

    sample = sample_instructions(load_alpaca_instructions(), 0)  # the bundled copy
    assert [(r["instruction_index"], r["instruction"]) for r in recs] == sample  # seeded by the concept id
    r0 = recs[0]
    assert r0["sampling"]["temperature"] == 1.0 and r0["max_new_tokens"] == 16 and r0["answer_tokens"] <= 16
    assert r0["steering"].endswith(r0["run"]) and r0["run"].startswith("c0-") and r0["factor"] > 0
    assert r0["mode"] == "steering" and r0["seed"] == 0 and r0["chat"] is True
    sweep = read_jsonl(gen / "sweep" / "c1.jsonl")
    assert sorted({r["factor"] for r in sweep}) == [0.0, 8.0, 16.0] and len(sweep) == 30
    assert read_jsonl(gen / "prompting" / "c1.jsonl")[0]["prompt"].startswith("Mention concept 1.\n\nQuestion: ")
    # resumable: a rerun skips finished concepts and rewrites nothing
    mtime = os.path.getmtime(gen / "prosv" / "c0.jsonl")
    assert cli("axbench", "generate", *GEN_ARGS, "--runs", train, "--out", gen / "prosv", "--method", "PrOSV") == 0
    assert os.path.getmtime(gen / "prosv" / "c0.jsonl") == mtime
    # a folder written before --select-half and --report-half existed (no such fields) resumes the same way
    settings = json.loads((gen / "prosv" / "generate.json").read_text())
    del settings["select_half"], settings["report_half"]
    (gen / "prosv" / "generate.json").write_text(json.dumps(settings))
    assert cli("axbench", "generate", *GEN_ARGS, "--runs", train, "--out", gen / "prosv", "--method", "PrOSV") == 0
    assert os.path.getmtime(gen / "prosv" / "c0.jsonl") == mtime
    # other settings into the same folder are refused
    assert cli("axbench", "generate", *GEN_ARGS, "--runs", train, "--out", gen / "prosv", "--seed", "1") == 2

    # The tiny model writes noise: to make the judge's ratings (and factor selection) non-trivial, put the
    # server's trigger words into some answers (see judge_server.expected_rating).
    concept = {c: read_jsonl(gen / "prosv" / f"c{c}.jsonl")[0]["concept"] for c in (0, 1)}
    for c in (0, 1):
        rows = read_jsonl(gen / "sweep" / f"c{c}.jsonl")
        for r in rows:
            pos, f = r["instruction_pos"], r["factor"]
            if f == 8 and pos < 5:
                r["answer"] = f"{concept[c]} clunky"  # 1.5 on the selection half
            elif f == 8 and pos == 5:
                r["answer"] = concept[c]  # 2.0 once on the report half
            elif f == 16 and (pos == 0 or pos >= 5):
                r["answer"] = concept[c] + (" drift" if pos == 9 else "")  # best on 5-9, poor on 0-4
        write_jsonl(gen / "sweep" / f"c{c}.jsonl", rows)
    rows = read_jsonl(gen / "prosv" / "c1.jsonl")
    rows[0]["answer"] = f"{concept[1]}"
    rows[1]["answer"] = f"{concept[1]} drift clunky"
    rows[2]["answer"] = "MALFORMED reply"  # the judge answers without a rating: counted as 0, and counted
    write_jsonl(gen / "prosv" / "c1.jsonl", rows)

    # --- judge: 429s, a 500 and a timeout are retried; the rerun costs nothing
    # ("slow" is never answered while the server runs: only the client's timeout ends it)
    with JudgeServer(script=["429", "429", "slow", "500"], slow_seconds=60) as server:
        url = ["--base-url", server.base_url]
        assert cli("axbench", "judge", "--generations", gen / "prosv", *url, *FAST_JUDGE, "--timeout", "5") == 0
        # 2 concepts x 10 answers x 3 questions, + 4 retried attempts
        assert server.request_count == 60 + 4
        assert [str(s) for s in server.statuses[:4]] == ["429", "429", "slow", "500"]
        report = json.load(open(gen / "prosv" / "ratings" / "judge_report.json"))
        stats = report["stats"]
        assert stats["retries"] == 4 and stats["requests_sent"] == 60 + 4
        assert stats["rated"] == 60 and stats["malformed"] == 3 and stats["failures"] == 0
        assert stats["prompt_tokens"] > 0 and stats["completion_tokens"] > 0 and report["status"] == "complete"
        assert server.auth_headers == {f"Bearer {KEY}"}
        before = server.request_count
        assert cli("axbench", "judge", "--generations", gen / "prosv", *url, *FAST_JUDGE) == 0
        assert server.request_count == before  # zero requests: both concepts' rating files are kept
        report = json.load(open(gen / "prosv" / "ratings" / "judge_report.json"))
        assert report["kept"] == [0, 1] and report["stats"]["rated"] == 0
        kept = (gen / "prosv" / "ratings" / "c1.jsonl").read_text()
        os.remove(gen / "prosv" / "ratings" / "c1.jsonl")  # a lost rating file: its ratings come from the cache
        assert cli("axbench", "judge", "--generations", gen / "prosv", *url, *FAST_JUDGE) == 0
        assert server.request_count == before and (gen / "prosv" / "ratings" / "c1.jsonl").read_text() == kept
        stats = json.load(open(gen / "prosv" / "ratings" / "judge_report.json"))["stats"]
        assert stats["requests_sent"] == 0 and stats["cache_hits"] == 30
        for name in ("sweep", "prompting"):
            assert cli("axbench", "judge", "--generations", gen / name, *url, *FAST_JUDGE) == 0

        # --- robustness: the suppression attack from a file, the trained factor at 100% and 50%
        attack = root / "attack.jsonl"
        instructions = load_alpaca_instructions()
        write_jsonl(attack, [{"concept_id": c, "instruction_index": i,
                              "instruction": f"{instructions[i]} Avoid {concept[c]}."}
                             for c in (0, 1) for i, _ in sample_instructions(instructions, c)])
        assert cli("axbench", "robustness", *GEN_ARGS, "--runs", train, "--out", gen / "attack", "--method", "PrOSV",
                   "--attack-file", attack, "--factor-scales", "1,0.5") == 0
        att = read_jsonl(gen / "attack" / "c0.jsonl")
        assert {r["method"] for r in att} == {"PrOSV", "PrOSV x0.5"} and {r["attack"] for r in att} == {"suppression"}
        assert att[0]["prompt"].endswith(f"Avoid {concept[0]}.") and att[0]["instruction"] == sample[0][1]
        assert {r["factor_scale"] for r in att} == {1.0, 0.5}
        assert cli("axbench", "judge", "--generations", gen / "attack", *url, *FAST_JUDGE) == 0

    # --- utility: unsteered, the two steerings at two scales, the prompting baseline
    util = root / "utility"
    assert cli("axbench", "utility", "--model", "builtin", "--runs", train, "--first-k", "2", "--mc",
               FIXTURES / "tiny_mmlu.jsonl", "--gsm", FIXTURES / "tiny_gsm8k.jsonl", "--out", util,
               "--factor-scales", "1,0.5", "--prompting-file", prompts, "--method", "PrOSV", "--setting", SETTING,
               "--mc-max-new-tokens", "16", "--gsm-max-new-tokens", "16", "--batch-size", "10") == 0
    urows = json.load(open(util / "utility.json"))["rows"]
    assert {(r["method"], r["task"]) for r in urows} == {(m, t) for m in ("unsteered", "PrOSV", "PrOSV x0.5",
                                                                          "prompting") for t in ("mc", "gsm")}
    assert all(len(r["per_concept"]) == (1 if r["method"] == "unsteered" else 2) for r in urows)
    # m15: every accuracy recomputed from the stored predictions (prediction vs gold, then the mean per steering and
    # over steerings), and the predictions are those of the answers under the prosv protocol's parses
    from prosv_jax.evaluation.utility import parse_gsm, parse_mc

    slug = {"unsteered": "unsteered", "PrOSV": "PrOSV", "PrOSV x0.5": "PrOSV_x0.5", "prompting": "prompting"}
    for r in urows:
        per = {}
        for name in r["per_concept"]:
            preds = read_jsonl(util / "items" / slug[r["method"]] / r["task"] / f"{name}.jsonl")
            assert len(preds) == r["n_items"]
            for p in preds:
                parsed = parse_mc(p["answer"], 4) if r["task"] == "mc" else parse_gsm(p["answer"])
                assert p["prediction"] == parsed and p["correct"] == (parsed is not None and parsed == p["gold"])
            per[name] = sum(p["correct"] for p in preds) / len(preds)
        assert r["per_concept"] == pytest.approx(per) and r["accuracy"] == pytest.approx(sum(per.values()) / len(per))

    # --- score, checked against a hand computation from the ratings files
    report_dir = root / "report"
    assert cli("axbench", "score", "--ratings", gen, "--out", report_dir, "--utility", util) == 0
    hand = {}
    for name in ("prosv", "sweep", "prompting", "attack"):
        hand.update(_hand_scores(gen / name / "ratings"))
    got = defaultdict(dict)
    with open(report_dir / "per_concept.csv") as f:
        for row in csv.DictReader(f):
            got[(row["method"], row["attack"] or None)][int(row["concept_id"])] = float(row["score"])
    assert set(got) == set(hand)
    for key, (overall, per) in hand.items():
        assert got[key] == pytest.approx(per), key
    # the planted sweep: factor 8 wins on 0-4 (1.5 vs 0.4), and is reported on 5-9 (0.4), not factor 16's 5-9 (2.0)
    assert hand[("SV sweep", None)] == (pytest.approx(0.4), {0: pytest.approx(0.4), 1: pytest.approx(0.4)})
    # PrOSV concept 1: answers 0 (2,2,2) -> 2 and 1 (2,1,1) -> 1.2; the malformed one and the noise score 0
    assert hand[("PrOSV", None)][1][1] == pytest.approx((2 + 1.2) / 10)
    with open(report_dir / "summary.csv") as f:
        table = {row["method"]: row for row in csv.DictReader(f)}
    assert set(table) == {"PrOSV", "SV sweep", "prompting", "PrOSV x0.5"}
    for (method, attack), (overall, _) in hand.items():
        column = SETTING if attack is None else f"{SETTING} [{attack}]"
        assert float(table[method][column]) == pytest.approx(overall, abs=5e-4)
    md = (report_dir / "summary.md").read_text()
    assert f"| method | {SETTING} | {SETTING} [suppression] |" in md and "Utility" in md
    chosen = {row["concept_id"]: row["chosen_factor"] for row in csv.DictReader(open(report_dir / "per_concept.csv"))
              if row["method"] == "SV sweep"}
    assert chosen == {"0": "8.0", "1": "8.0"}
    assert (report_dir / "score_by_method.png").stat().st_size > 1000
    assert (report_dir / "utility_vs_robustness.png").stat().st_size > 1000
    # the key is never written anywhere
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".csv", ".md", ".txt"):
            assert KEY not in path.read_text(errors="replace"), path


def test_sweep_in_protocol_order(env, tmp_path, capsys):
    """A factor sweep in protocol order: every factor on instructions 0-4, rated; then instructions 5-9 at the factor
    each steering's ratings chose, rated; scored together as AxBench's selection on a full grid would score it.
    A judge rerun keeps the rated concepts without a request."""
    train, sel, rep = env["train"], tmp_path / "select", tmp_path / "report"
    assert cli("axbench", "generate", *GEN_ARGS, "--runs", train, "--out", sel, "--method", "SV sweep",
               "--factor", "0,8,16", "--select-half") == 0
    concept = {}
    for c in (0, 1):
        rows = read_jsonl(sel / f"c{c}.jsonl")
        assert len(rows) == 15 and {r["instruction_pos"] for r in rows} == set(range(5))
        assert {r["grid_half"] for r in rows} == {"select"}
        concept[c] = rows[0]["concept"]
        for r in rows:  # factor 8: 1.5 on the selection half; factor 16: 2.0 once (mean 0.4)
            if r["factor"] == 8:
                r["answer"] = f"{concept[c]} clunky"
            elif r["factor"] == 16 and r["instruction_pos"] == 0:
                r["answer"] = concept[c]
        write_jsonl(sel / f"c{c}.jsonl", rows)
    with JudgeServer() as server:
        url = ["--base-url", server.base_url]
        assert cli("axbench", "judge", "--generations", sel, *url, *FAST_JUDGE) == 0
        assert server.request_count == 2 * 15 * 3
        assert cli("axbench", "generate", *GEN_ARGS, "--runs", train, "--out", rep,
                   "--report-half", sel / "ratings") == 0
        for c in (0, 1):
            rows = read_jsonl(rep / f"c{c}.jsonl")
            assert [r["instruction_pos"] for r in rows] == [5, 6, 7, 8, 9]
            assert {(r["method"], r["factor"], r["mode"], r["grid_half"]) for r in rows} == {
                ("SV sweep", 8.0, "sweep", "report")}
            rows[0]["answer"] = concept[c]  # 2.0 once on the report half: 0.4
            write_jsonl(rep / f"c{c}.jsonl", rows)
        assert cli("axbench", "judge", "--generations", rep, *url, *FAST_JUDGE) == 0
        before = server.request_count
        assert cli("axbench", "judge", "--generations", sel, *url, *FAST_JUDGE) == 0
        assert server.request_count == before and "kept as rated before: [0, 1]" in capsys.readouterr().out
    assert cli("axbench", "score", "--ratings", sel / "ratings", rep / "ratings", "--out", tmp_path / "score") == 0
    rows = [r for r in csv.DictReader(open(tmp_path / "score" / "per_concept.csv"))]
    assert {(r["concept_id"], r["chosen_factor"]) for r in rows} == {("0", "8.0"), ("1", "8.0")}
    assert [float(r["score"]) for r in rows] == pytest.approx([0.4, 0.4])
    # bad input: the report half alone cannot choose; a factor option with --report-half is refused
    assert cli("axbench", "score", "--ratings", rep / "ratings", "--out", tmp_path / "bad") == 2
    assert "give the ratings of both halves" in capsys.readouterr().err
    assert cli("axbench", "generate", *GEN_ARGS, "--runs", train, "--out", tmp_path / "x", "--factor", "8",
               "--report-half", sel / "ratings") == 2
    assert "--report-half answers at the factor its ratings chose" in capsys.readouterr().err


def test_refusing_judge_keeps_finished_work(env, tmp_path):
    """An endpoint that starts refusing: finished concepts are written, finished ratings cached, the error clear;
    a rerun against a working endpoint asks only for what is missing."""
    gen = tmp_path / "gen"
    assert cli("axbench", "generate", *GEN_ARGS, "--runs", env["train"], "--out", gen, "--method", "PrOSV") == 0
    with JudgeServer(refuse=503, refuse_after=35) as server:  # concept 0 (30 requests) passes, concept 1 fails
        assert cli("axbench", "judge", "--generations", gen, "--base-url", server.base_url, *FAST_JUDGE,
                   "--max-concurrency", "1") == 3
    report = json.load(open(gen / "ratings" / "judge_report.json"))
    assert report["status"] == "partial" and report["written"] == [0]
    assert report["failed"]["concept_id"] == 1 and report["failed"]["ratings_obtained"] == 5
    assert "503" in report["failed"]["error"]
    assert len(read_jsonl(gen / "ratings" / "c0.jsonl")) == 10 and not (gen / "ratings" / "c1.jsonl").exists()
    with JudgeServer() as server:
        assert cli("axbench", "judge", "--generations", gen, "--base-url", server.base_url, *FAST_JUDGE) == 0
        assert server.request_count == 60 - 35  # only the missing ratings
    # refusing from the first request: a clear error, nothing written, nothing lost
    fresh = tmp_path / "fresh"
    shutil.copytree(gen, fresh, ignore=shutil.ignore_patterns("ratings"))
    with JudgeServer(refuse=401) as server:
        assert cli("axbench", "judge", "--generations", fresh, "--base-url", server.base_url, *FAST_JUDGE,
                   "--max-concurrency", "1") == 3
        assert server.request_count == 1  # a 401 is not retried, and nothing else is tried after it
    report = json.load(open(fresh / "ratings" / "judge_report.json"))
    assert report["status"] == "partial" and report["written"] == [] and report["not_attempted"] == [1]
    assert KEY not in (fresh / "ratings" / "judge_report.json").read_text()


def _split_copy(tmp_path, source: Path, metadata_lines=None) -> Path:
    split = tmp_path / "split" / "generate"
    split.mkdir(parents=True)
    shutil.copy(source / "generate" / "train_data.parquet", split)
    if metadata_lines is None:
        shutil.copy(source / "generate" / "metadata.jsonl", split)
    else:
        (split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metadata_lines))
    return split.parent


def test_bad_input(env, tmp_path, capsys, concept10_split):
    prompts = tmp_path / "prompting.jsonl"
    write_jsonl(prompts, [{"concept_id": c, "prompt": "p"} for c in range(10)])
    base = ["axbench", "generate", *GEN_ARGS, "--out", tmp_path / "out"]
    # unknown concept id
    assert cli(*base, "--runs", env["train"], "--concepts", "0,99") == 2
    assert "unknown concept id(s) [99]" in capsys.readouterr().err
    # a concept of the split without a trained steering
    assert cli(*base, "--runs", env["train"], "--concepts", "0,5") == 2
    assert "no trained steering for concept id(s) [5]" in capsys.readouterr().err
    # missing column in the split's metadata
    no_concept = _split_copy(tmp_path / "a", concept10_split, [{"concept_id": 0, "ref": "x"}])
    assert cli(*base, "--prompting-file", prompts, "--split", no_concept) == 2
    assert "missing column(s) ['concept']" in capsys.readouterr().err
    # an empty split: clear errors from generate and from train
    empty = _split_copy(tmp_path / "b", concept10_split, [])
    assert cli(*base, "--prompting-file", prompts, "--split", empty) == 2
    assert "empty" in capsys.readouterr().err
    assert cli("axbench", "train", "--config", TINY_PROSV, f"--config.data.split_dir={empty}",
               "--config.data.concept_ids=[]", "--out", tmp_path / "t") == 2
    assert "empty" in capsys.readouterr().err
    # a prompting file without the column it needs
    bad = tmp_path / "bad_prompts.jsonl"
    write_jsonl(bad, [{"concept_id": 0, "text": "p"}])
    assert cli(*base, "--prompting-file", bad, "--split", SPLIT, "--concepts", "0") == 2
    assert "missing field(s) ['prompt']" in capsys.readouterr().err
    # an attack file that misses an instruction
    attack = tmp_path / "attack.jsonl"
    write_jsonl(attack, [{"concept_id": 0, "instruction_index": 1, "instruction": "x"}])
    assert cli("axbench", "robustness", *GEN_ARGS, "--runs", env["train"], "--out", tmp_path / "att",
               "--attack-file", attack) == 2
    assert "no rewritten instruction" in capsys.readouterr().err
    # a dead judge endpoint: one line, exit 2, no traceback (M5)
    server = JudgeServer().start()
    dead = server.base_url
    server.stop()
    assert cli("axbench", "prompts", "--split", SPLIT, "--concepts", "0", "--out", tmp_path / "p.jsonl",
               "--base-url", dead, *FAST_JUDGE, "--max-retries", "1") == 2
    err = capsys.readouterr().err
    assert "could not rate all requests" in err and "connection error" in err and "Traceback" not in err
    # nothing to score
    (tmp_path / "nothing").mkdir()
    assert cli("axbench", "score", "--ratings", tmp_path / "nothing", "--out", tmp_path / "r") == 2
    assert "no ratings" in capsys.readouterr().err


def test_per_row_factors_match_one_factor_per_batch(tmp_path, monkeypatch):
    """A sweep batch (one factor per row) answers exactly like batches that each use one factor."""
    import jax

    from prosv_jax.evaluation.generation import Generator
    from prosv_jax.interventions import Steering, SteeringVector

    monkeypatch.setenv("PROSV_JAX_CACHE", os.environ.get("PROSV_JAX_CACHE") or str(tmp_path))
    gen = Generator("builtin", batch_size=2)
    for positions in ("all", "f2+l2"):  # every prefill and decode step; the prompt's first and last 2 tokens only
        steering = Steering.single(1, SteeringVector(), positions)
        params = steering.init_params(jax.random.key(0), gen.model.cfg)
        prompts, factors = ["Name a color.", "Count to three."], [0.0, 40.0]
        kw = dict(key=jax.random.key(1), max_new_tokens=6, temperature=0.0, steering=steering)
        mixed = gen.generate(prompts, params=params, factors=factors, **kw)
        single = [gen.generate(prompts, params=steering.with_factor(params, f), **kw)[i] for i, f in enumerate(factors)]
        assert mixed == single
        assert gen.generate(prompts, params=params, factors=factors, **kw) == mixed


def test_llm_written_prompts_and_rewrites(tmp_path, monkeypatch, capsys, concept10_split):
    """The judge endpoint writes the prompting baseline's prompts and the attack's rewrites (cached, key-free)."""
    from prosv_jax.evaluation.robustness import make_attack

    monkeypatch.setenv("PROSV_JUDGE_API_KEY", KEY)
    out = tmp_path / "prompts.jsonl"
    with JudgeServer(script=["429"]) as server:
        args = ["axbench", "prompts", "--split", SPLIT, "--concepts", "0,1", "--out", out, "--base-url",
                server.base_url, *FAST_JUDGE]
        assert cli(*args) == 0
        assert server.request_count == 3  # 2 prompts + 1 retry
        rows = read_jsonl(out)
        assert rows == [{"concept_id": 0, "prompt": "Always mention references to specific dates and publication "
                                                    "information."},
                        {"concept_id": 1, "prompt": "Always mention technical specifications related to audio "
                                                    "products and their performance."}]  # the text between the markers
        assert cli(*args) == 0 and server.request_count == 3  # cached
        attack = make_attack("llm", judge_kwargs=dict(base_url=server.base_url, model="test-judge",
                                                      cache_dir=str(tmp_path / "rw"), backoff_base=0.01),
                             log=lambda *_: None)
        texts = attack({0: ("some concept", [(5, "Write a poem."), (7, "Sum 2 and 3.")])})
        assert texts == {(0, 5): "Write a poem. Never mention some concept.",
                         (0, 7): "Sum 2 and 3. Never mention some concept."}
        # a reply without the markers (the server refuses this concept) is an error, not a prompt (M4)
        refusing = _split_copy(tmp_path, concept10_split, [{"concept_id": 0, "concept": "refuse this concept"}])
        refused = tmp_path / "refused.jsonl"
        assert cli("axbench", "prompts", "--split", refusing, "--concepts", "0", "--out", refused,
                   "--base-url", server.base_url, *FAST_JUDGE) == 2
        assert "did not write the text between" in capsys.readouterr().err and not refused.exists()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace")
