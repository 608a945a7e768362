"""Utility stage: the multiple-choice and GSM8K-style formats, answer parsing, accuracy, and one real-model run."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from prosv_jax.evaluation.utility import (MC_SUFFIX, UtilitySettings, evaluate, gsm_gold, gsm_prompt, load_gsm,
                                          load_mc, mc_prompt, parse_gsm, parse_mc, run_utility)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MC = str(FIXTURES / "tiny_mmlu.jsonl")
GSM = str(FIXTURES / "tiny_gsm8k.jsonl")


def test_load_mc_and_prompt():
    items = load_mc(MC)
    assert len(items) == 4 and [i["answer"] for i in items] == [1, 0, 2, 3]
    prompt = mc_prompt(items[0])
    assert prompt.startswith("What is the capital of France?\n\nA. Berlin\nB. Paris\nC. Madrid\nD. Rome\n\n")
    assert prompt.endswith(MC_SUFFIX)


def test_load_gsm_gold_numbers():
    items = load_gsm(GSM)
    assert [i["gold"] for i in items] == [8.0, 48.0, 950.0]  # "1,200 - 250 = 950" -> 950, commas dropped
    assert "#### <number>" in gsm_prompt(items[0])
    assert gsm_gold("x\n#### -3.5") == -3.5


def test_json_list_form(tmp_path):
    path = tmp_path / "mc.json"
    path.write_text(json.dumps([{"question": "q", "choices": ["a", "b"], "answer": 1}]))
    assert load_mc(str(path))[0]["answer"] == 1


@pytest.mark.parametrize("text,n,expected", [
    ("B", 4, 1), ("The answer is C.", 4, 2), ("(D) Carbon dioxide", 4, 3), ("A. Mars", 4, 0),
    ("I think so", 4, None),  # the word "I" is no choice letter of a 4-choice item
    ("E", 4, None), ("E", 5, 4), ("", 4, None), ("Answer: b", 4, None),  # lowercase is not a letter choice
])
def test_parse_mc(text, n, expected):
    assert parse_mc(text, n) == expected


@pytest.mark.parametrize("text,expected", [
    ("3 + 5 = 8\n#### 8", 8.0), ("#### 1,234", 1234.0), ("so the total is $48.", 48.0), ("first 2 then 7", 7.0),
    ("#### -4", -4.0), ("no number", None), ("#### 12 apples, not 3", 12.0), ("2.50 dollars", 2.5),
])
def test_parse_gsm(text, expected):
    assert parse_gsm(text) == expected


@pytest.mark.parametrize("bad,match", [
    ({"question": "q", "choices": ["a", "b"]}, r"missing field\(s\) \['answer'\]"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "0-based index"),
    ({"question": "q", "choices": "ab", "answer": 0}, "list of 2"),
])
def test_mc_bad_input(tmp_path, bad, match):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=match):
        load_mc(str(path))


def test_gsm_bad_input(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "42"}) + "\n")
    with pytest.raises(ValueError, match="####"):
        load_gsm(str(path))
    path.write_text("")
    with pytest.raises(ValueError, match="holds no"):
        load_gsm(str(path))


def test_accuracy_with_stub_generate():
    mc, gsm = load_mc(MC), load_gsm(GSM)
    # known answers: right, right, wrong letter, unparseable -> 2/4
    replies = {mc_prompt(mc[0]): "B. Paris", mc_prompt(mc[1]): "A", mc_prompt(mc[2]): "The answer is D",
               mc_prompt(mc[3]): "carbon dioxide"}
    acc, preds = evaluate("mc", mc, lambda prompts: [replies[p] for p in prompts])
    assert acc == 0.5
    assert [p["prediction"] for p in preds] == [1, 0, 3, None]
    assert [p["correct"] for p in preds] == [True, True, False, False]
    # GSM: right (after ####), right (last number), wrong -> 2/3
    answers = iter(["3+5=8\n#### 8", "4 books cost 48 dollars", "#### 951"])
    acc, preds = evaluate("gsm", gsm, lambda prompts: [next(answers) for _ in prompts])
    assert acc == pytest.approx(2 / 3)
    assert [p["gold"] for p in preds] == [8.0, 48.0, 950.0]


def test_real_model_unsteered(tmp_path, monkeypatch):
    """One run through the real generation path (built-in tiny model, greedy), cached and rerun from the items."""
    monkeypatch.setenv("PROSV_JAX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "util"
    settings = UtilitySettings(model="builtin", out=str(out), mc=MC, gsm=GSM, mc_max_new_tokens=4,
                               gsm_max_new_tokens=4, batch_size=4, limit=3)
    rows = run_utility(settings, log=lambda *_: None)
    assert [(r["method"], r["task"]) for r in rows] == [("unsteered", "mc"), ("unsteered", "gsm")]
    for row in rows:
        preds = [json.loads(line) for line in open(out / "items" / "unsteered" / row["task"] / "unsteered.jsonl")]
        assert len(preds) == 3
        assert row["accuracy"] == sum(p["correct"] for p in preds) / 3  # accuracy is what the predictions say
        for p in preds:  # the prediction is the parse of the real answer
            assert p["prediction"] == (parse_mc(p["answer"], 4) if row["task"] == "mc" else parse_gsm(p["answer"]))
    saved = json.load(open(out / "utility.json"))["rows"]
    assert [r["accuracy"] for r in saved] == [r["accuracy"] for r in rows]
    # greedy decoding is deterministic, and the rerun reads the stored predictions
    mtime = os.path.getmtime(out / "items" / "unsteered" / "mc" / "unsteered.jsonl")
    assert run_utility(settings, log=lambda *_: None) == rows
    assert os.path.getmtime(out / "items" / "unsteered" / "mc" / "unsteered.jsonl") == mtime
    # S2: a rerun into the same folder with settings the predictions depend on changed is refused, not served stale
    edited = tmp_path / "mc_edited.jsonl"
    edited.write_text(Path(MC).read_text().replace("Paris", "Lyon"))
    for change, field in ((dict(limit=2), "limit"), (dict(mc_max_new_tokens=8), "mc_max_new_tokens"),
                          (dict(dtype="bfloat16"), "dtype"), (dict(mc=str(edited)), "mc_sha256")):
        with pytest.raises(ValueError, match=rf"holds utility predictions made with other settings \(\['{field}'\] "
                                             r"differ\).*new --out"):
            run_utility(dataclasses.replace(settings, **change), log=lambda *_: None)
    assert os.path.getmtime(out / "items" / "unsteered" / "mc" / "unsteered.jsonl") == mtime
    assert run_utility(dataclasses.replace(settings, batch_size=2), log=lambda *_: None) == rows  # not a setting


# --------------------------------------------------------------------------------------------------------------------
# the reference protocol (m12)

def test_reference_matching_by_hand():
    from prosv_jax.evaluation.utility import reference_correct

    mc = {"choices": ["w", "x", "y", "z"], "answer": 1}
    assert reference_correct("mc", "I would pick B, since", mc) == (1, True)  # the gold letter appears
    assert reference_correct("mc", "A or B? A.", mc) == (1, True)  # anywhere (prosv's parse takes the first: A)
    assert reference_correct("mc", "Because the answer is C", mc) == (None, False)
    assert reference_correct("mc", "Bread", mc) == (None, False)  # a letter inside a word does not count
    gsm = {"gold": 8.0}
    assert reference_correct("gsm", "8 apples, and 12 pears", gsm) == (8.0, True)  # any number, scanning back
    assert reference_correct("gsm", "about 8.0004", gsm) == (8.0004, True)  # within 1e-3
    assert reference_correct("gsm", "8.002 or 1,200", gsm) == (1200.0, False)
    assert reference_correct("gsm", "no idea", gsm) == (None, False)


def test_reference_prompts_are_few_shot_chat_turns():
    mc, gsm = load_mc(MC), load_gsm(GSM)
    seen = []
    acc, preds = evaluate("mc", mc[2:3], lambda ps: seen.extend(ps) or ["B"] * len(ps), "reference", mc[:2])
    assert seen == [[{"role": "user", "content": mc_prompt(mc[0])}, {"role": "assistant", "content": "B"},
                     {"role": "user", "content": mc_prompt(mc[1])}, {"role": "assistant", "content": "A"},
                     {"role": "user", "content": mc_prompt(mc[2])}]]
    seen.clear()
    evaluate("gsm", gsm[1:2], lambda ps: seen.extend(ps) or ["48"] * len(ps), "reference", gsm[:1])
    assert seen[0][1] == {"role": "assistant", "content": gsm[0]["answer"]}  # the worked solution
    assert seen[0][2] == {"role": "user", "content": gsm_prompt(gsm[1])}
    with pytest.raises(ValueError, match="protocol"):
        evaluate("mc", mc, lambda ps: ps, "zero-shot")


def test_reference_protocol_runs_on_a_real_model(tmp_path, monkeypatch):
    """The few-shot turns go through the chat template of a real (built-in) model; settings are recorded."""
    monkeypatch.setenv("PROSV_JAX_CACHE", str(tmp_path / "cache"))
    shots = tmp_path / "shots.jsonl"
    shots.write_text("".join(line for line in open(MC).readlines()[:1]))
    settings = UtilitySettings(model="builtin", out=str(tmp_path / "u"), mc=MC, protocol="reference",
                               mc_shots=str(shots), mc_max_new_tokens=3, batch_size=4, limit=2)
    rows = run_utility(settings, log=lambda *_: None)
    preds = [json.loads(line) for line in open(tmp_path / "u" / "items" / "unsteered" / "mc" / "unsteered.jsonl")]
    from prosv_jax.evaluation.utility import reference_correct

    items = load_mc(MC)
    assert [p["correct"] for p in preds] == [reference_correct("mc", p["answer"], items[p["item"]])[1]
                                            for p in preds]
    assert rows[0]["accuracy"] == sum(p["correct"] for p in preds) / 2
    stored = json.load(open(tmp_path / "u" / "utility_settings.json"))
    assert (stored["protocol"], stored["mc_max_new_tokens"], stored["gsm_max_new_tokens"]) == ("reference", 3, 512)
    with pytest.raises(ValueError, match="belong to --protocol reference"):
        run_utility(dataclasses.replace(settings, protocol="prosv", out=str(tmp_path / "v")), log=lambda *_: None)
