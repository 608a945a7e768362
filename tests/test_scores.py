"""Steering-score arithmetic, factor selection and AlpacaEval instruction sampling (hand-computed cases)."""

import json

import pytest

from prosv_jax.evaluation import (Rating, answer_score, concept_score, harmonic_mean_score, load_alpaca_instructions,
                                  overall_score, sample_instructions, score_concepts, select_factor)


# --------------------------------------------------------------------------------------------------------------------
# harmonic mean with the zero rule

@pytest.mark.parametrize("ratings,expected", [
    ((2, 2, 2), 2.0),
    ((1, 1, 1), 1.0),
    ((2, 1, 2), 1.5),          # 3 / (1/2 + 1 + 1/2)
    ((2, 2, 1), 1.5),
    ((1, 1, 2), 1.2),          # 3 / (1 + 1 + 1/2)
    ((1, 2, 2), 1.5),
    ((0, 2, 2), 0.0),          # any zero -> 0
    ((2, 0, 2), 0.0),
    ((2, 2, 0), 0.0),
    ((0, 0, 0), 0.0),
])
def test_harmonic_mean_zero_rule(ratings, expected):
    assert harmonic_mean_score(*ratings) == pytest.approx(expected)
    assert answer_score(ratings) == pytest.approx(expected)
    assert answer_score(dict(zip(("concept", "instruction", "fluency"), ratings))) == pytest.approx(expected)


def test_answer_forms_and_bad_input():
    as_ratings = {f: Rating(f, v, True, "") for f, v in zip(("concept", "instruction", "fluency"), (2, 1, 2))}
    assert answer_score(as_ratings) == pytest.approx(1.5)
    assert answer_score(0.75) == 0.75
    with pytest.raises(ValueError, match="lack factor"):
        answer_score({"concept": 2, "fluency": 2})
    with pytest.raises(TypeError):
        answer_score((2, 2))
    with pytest.raises(ValueError):
        harmonic_mean_score(-1, 2, 2)
    with pytest.raises(ValueError, match="empty"):
        concept_score([])
    with pytest.raises(ValueError, match="no concepts"):
        score_concepts({})
    with pytest.raises(ValueError, match="concept 'c' has no answers"):
        score_concepts({"c": []})


def test_concept_and_overall_means():
    answers = {
        "c1": [(2, 2, 2), (2, 1, 2), (0, 2, 2), (1, 1, 1)],   # 2, 1.5, 0, 1 -> 1.125
        "c2": [(1, 1, 2), (2, 2, 2)],                         # 1.2, 2 -> 1.6
        "c3": [(2, 2, 0)],                                    # 0
    }
    s = score_concepts(answers)
    assert s.per_answer["c1"] == pytest.approx([2, 1.5, 0, 1])
    assert s.per_concept == pytest.approx({"c1": 1.125, "c2": 1.6, "c3": 0.0})
    assert s.overall == pytest.approx((1.125 + 1.6 + 0.0) / 3)
    assert s.factor_means["c1"] == pytest.approx({"concept": 1.25, "instruction": 1.5, "fluency": 1.75})
    assert concept_score(answers["c2"]) == pytest.approx(1.6)
    assert overall_score(s.per_concept) == pytest.approx(s.overall)
    assert overall_score([1.0, 2.0]) == 1.5


# --------------------------------------------------------------------------------------------------------------------
# factor selection: choose on instructions 0-4, report on 5-9

def _answers(first5, last5):
    return [(v, v, v) for v in first5] + [(v, v, v) for v in last5]


def test_factor_selection_uses_the_right_halves():
    data = {
        # factor 4.0 is best on 0-4 (mean 2.0) but worst on 5-9 (0.0); factor 8.0 is best on 5-9 (2.0)
        101: {2.0: _answers([1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
              4.0: _answers([2, 2, 2, 2, 2], [0, 0, 0, 0, 0]),
              8.0: _answers([1, 1, 0, 0, 0], [2, 2, 2, 2, 2])},
        # factor 2.0 wins on 0-4 (1.6 vs 1.2); reported on 5-9: (2+2+1+0+0)/5 = 1.0
        102: {2.0: _answers([2, 2, 2, 1, 1], [2, 2, 1, 0, 0]),
              4.0: _answers([1, 1, 1, 1, 2], [2, 2, 2, 2, 2])},
    }
    sel = select_factor(data)
    assert sel.chosen == {101: 4.0, 102: 2.0}
    assert sel.scores == pytest.approx({101: 0.0, 102: 1.0})
    assert sel.selection_scores[101] == pytest.approx({2.0: 1.0, 4.0: 2.0, 8.0: 0.4})
    assert sel.selection_scores[102] == pytest.approx({2.0: 1.6, 4.0: 1.2})
    assert sel.overall == pytest.approx(0.5)

    # swapping the halves flips the choice: 8.0 is best on 5-9 for concept 101
    swapped = select_factor(data, select_on=range(5, 10), report_on=range(0, 5))
    assert swapped.chosen[101] == 8.0 and swapped.scores[101] == pytest.approx(0.4)


def test_factor_selection_ties_and_errors():
    tie = {7: {8.0: _answers([2] * 5, [1] * 5), 2.0: _answers([2] * 5, [2] * 5), 4.0: _answers([1] * 5, [2] * 5)}}
    sel = select_factor(tie)
    assert sel.chosen == {7: 2.0} and sel.scores == {7: 2.0}  # tie on 0-4 -> smallest factor
    with pytest.raises(ValueError, match="9 answers"):  # the chosen factor lacks instruction 9
        select_factor({1: {2.0: _answers([1] * 5, [1] * 4)}})
    with pytest.raises(ValueError, match="overlap"):
        select_factor(tie, select_on=range(0, 6), report_on=range(5, 10))
    with pytest.raises(ValueError, match="no factors"):
        select_factor({1: {}})
    with pytest.raises(ValueError, match="no concepts"):
        select_factor({})
    # precomputed answer scores work too
    assert select_factor({1: {1.0: [0.5] * 5 + [1.5] * 5}}).scores == {1: 1.5}


def test_factor_selection_in_protocol_order_matches_the_full_grid():
    """Every factor on 0-4, only the chosen one on 5-9: the same choice and score as the full grid; a report half
    at another factor than the chosen one is refused with the command that fixes it."""
    full = {3: {1.0: _answers([1, 1, 2, 2, 1], [2, 2, 2, 2, 2]), 2.0: _answers([2, 2, 2, 2, 1], [1, 0, 1, 1, 2]),
                4.0: _answers([0, 0, 1, 1, 1], [2, 2, 2, 2, 2])}}
    protocol = {3: {f: (a if f == 2.0 else a[:5]) for f, a in full[3].items()}}
    assert select_factor(protocol) == select_factor(full)
    assert select_factor(protocol).scores == pytest.approx({3: 1.0})
    wrong = {3: {f: (a if f == 1.0 else a[:5]) for f, a in full[3].items()}}
    with pytest.raises(ValueError, match="chosen factor 2.0 has 5 answers.*--report-half"):
        select_factor(wrong)


# --------------------------------------------------------------------------------------------------------------------
# instruction sampling and loading

def test_sample_instructions_is_seeded_by_concept_id():
    pool = [f"instruction {k}" for k in range(805)]
    a = sample_instructions(pool, 17)
    assert a == sample_instructions(pool, 17)  # same seed, same instructions (and order)
    assert len(a) == 10 and len({i for i, _ in a}) == 10
    assert all(pool[i] == t for i, t in a)
    assert [i for i, _ in sample_instructions(pool, 18)] != [i for i, _ in a]
    draws = {tuple(i for i, _ in sample_instructions(pool, cid)) for cid in range(20)}
    assert len(draws) == 20
    assert len(sample_instructions(pool, 3, n=4)) == 4 and sample_instructions(pool, 3, n=0) == []
    with pytest.raises(ValueError, match="2\\*\\*32"):
        sample_instructions(pool, -1)
    with pytest.raises(ValueError, match="cannot sample 11"):
        sample_instructions(pool[:10], 1, n=11)
    with pytest.raises(TypeError, match="integer"):
        sample_instructions(pool, "17")


def test_sample_instructions_is_axbench_draw():
    """AxBench draws ``alpaca_eval_df.sample(10, random_state=concept_id)``; concept 0's indices are in method.md."""
    pool = [f"instruction {k}" for k in range(805)]
    assert [i for i, _ in sample_instructions(pool, 0)] == [8, 258, 172, 317, 294, 251, 609, 331, 775, 320]
    import pandas as pd  # a dependency of datasets, which reads the AxBench splits

    df = pd.DataFrame({"instruction": pool})
    for cid in (0, 1, 2, 7, 499, 16_000):
        ref = df.sample(10, random_state=cid)
        assert sample_instructions(pool, cid) == list(zip(ref.index.tolist(), ref["instruction"].tolist()))
    assert [i for i, _ in sample_instructions(pool[:37], 3, n=5)] == df.iloc[:37].sample(5, random_state=3).index.tolist()


def test_load_alpaca_instructions(tmp_path):
    p = tmp_path / "instructions.json"
    p.write_text(json.dumps([{"dataset": "x", "instruction": "Say hi."}, {"dataset": "y", "instruction": "Count."}]))
    assert load_alpaca_instructions(p) == ["Say hi.", "Count."]
    with pytest.raises(FileNotFoundError, match="not found"):
        load_alpaca_instructions(tmp_path / "missing.json")
    p.write_text(json.dumps({"instruction": "x"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_alpaca_instructions(p)
    p.write_text(json.dumps([{"instruction": "ok"}, {"prompt": "no instruction key"}]))
    with pytest.raises(ValueError, match="entry 1 has no string 'instruction'"):
        load_alpaca_instructions(p)
    p.write_text("[]")
    with pytest.raises(ValueError, match="empty"):
        load_alpaca_instructions(p)
    p.write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_alpaca_instructions(p)


def test_bundled_alpaca_instructions():
    """The bundled copy (a list of strings; the default) holds AlpacaEval's 805 instructions in file order."""
    instr = load_alpaca_instructions()
    assert len(instr) == 805 and len(set(instr)) == 805
    assert instr[0] == "What are the names of some famous actors that started their careers on Broadway?"
    picks = sample_instructions(instr, 0)
    assert [i for i, _ in picks] == [8, 258, 172, 317, 294, 251, 609, 331, 775, 320]
    assert all(instr[i] == t for i, t in picks)


# --------------------------------------------------------------------------------------------------------------------
# the score stage: comparable columns only (S1)

def _rated(folder, method, ratings_by_concept, status="complete", generations=None):
    """A ratings folder as `axbench judge` writes it: {cid: [(c, i, f), ...]} -> c<cid>.jsonl (+ judge files)."""
    folder.mkdir(parents=True)
    (folder / "judge.json").write_text(json.dumps({"judge": {"model": "j"}, "generations": generations}))
    (folder / "judge_report.json").write_text(json.dumps({"status": status, "written": sorted(ratings_by_concept)}))
    for cid, triples in ratings_by_concept.items():
        rows = [{"method": method, "setting": "S", "concept_id": cid, "concept": f"concept {cid}",
                 "instruction_pos": k, "ratings": dict(zip(("concept", "instruction", "fluency"), t))}
                for k, t in enumerate(triples)]
        (folder / f"c{cid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_score_refuses_columns_over_different_concepts(tmp_path):
    """The review's case: A rated on concepts {0, 1}, B on {0} only. Refused; with allow_mixed_concepts the table
    shows each cell's concept count and a warning."""
    from prosv_jax.evaluation.report import load_ratings, score_groups, write_report

    _rated(tmp_path / "r" / "a", "A", {0: [(2, 2, 2)], 1: [(0, 2, 2)]})  # A: (2 + 0) / 2 = 1.0
    _rated(tmp_path / "r" / "b", "B", {0: [(2, 2, 2)]})  # B: 2.0
    groups = score_groups(load_ratings([tmp_path / "r"]))
    assert {k[0]: (g["overall"], g["n_concepts"]) for k, g in groups.items()} == {"A": (1.0, 2), "B": (2.0, 1)}
    with pytest.raises(ValueError, match=r"column 'S' compares methods over different concepts: A: \[0, 1\]; "
                                         r"B: \[0\].*--allow-mixed-concepts"):
        write_report(groups, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    paths = write_report(groups, str(tmp_path / "out"), allow_mixed_concepts=True)
    md = open(paths["summary_md"]).read()
    assert "| A | 1.000 |" in md and "| B | 2.000 |" in md
    assert "Concepts scored per cell" in md and "| A | 2 |" in md and "| B | 1 |" in md
    assert "WARNING: column 'S' compares methods over different concepts" in md
    saved = json.load(open(paths["scores"]))
    assert [g["n_concepts"] for g in saved["groups"]] == [2, 1] and len(saved["warnings"]) == 1
    # the same concepts: no warning
    _rated(tmp_path / "same" / "a", "A", {0: [(2, 2, 2)]})
    _rated(tmp_path / "same" / "b", "B", {0: [(1, 1, 1)]})
    paths = write_report(score_groups(load_ratings([tmp_path / "same"])), str(tmp_path / "out2"))
    assert "WARNING" not in open(paths["summary_md"]).read()


def test_score_refuses_partial_ratings_folders(tmp_path):
    from prosv_jax.evaluation.report import load_ratings

    _rated(tmp_path / "p", "A", {0: [(2, 2, 2)]}, status="partial")
    with pytest.raises(ValueError, match=r"ratings folder .*p is partial .*concepts rated: \[0\]"):
        load_ratings([tmp_path / "p"])
    killed = _rated(tmp_path / "k", "A", {0: [(2, 2, 2)]})
    (killed / "judge_report.json").unlink()
    with pytest.raises(ValueError, match="has no judge_report.json: its judge run did not finish"):
        load_ratings([killed])
    generations = tmp_path / "gen"
    generations.mkdir()
    for cid in (0, 1):
        (generations / f"c{cid}.jsonl").write_text("{}\n")
    _rated(tmp_path / "g", "A", {0: [(2, 2, 2)]}, generations=str(generations))
    with pytest.raises(ValueError, match=r"lacks concept\(s\) \[1\] of .*gen: finish it with `prosv-jax axbench "
                                         r"judge --generations"):
        load_ratings([tmp_path / "g"])


def test_figures_are_saved_atomically(tmp_path):
    """m2: a figure replaces its file only once fully written; a failing save leaves the old file and no temporary."""
    from prosv_jax.figures import save_figure, subplots

    fig, ax = subplots()
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "plot.png"
    save_figure(fig, path, dpi=50)
    first = path.read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        save_figure(fig, path, dpi=-5)
    assert path.read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
