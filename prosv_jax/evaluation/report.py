"""Stage `axbench score`: steering scores from rating files, the summary table and the plots.

Per answer: the harmonic mean of the three ratings (0 if any is 0); per concept: the mean over its answers; overall:
the mean over concepts. Answers are grouped by (method, setting, attack). A group of mode "sweep" (fixed factors) gets
AxBench's factor selection: per concept the factor with the best mean on instructions 0-4 is chosen and the concept's
score is that factor's mean on instructions 5-9 (a full grid, or one answered in protocol order: every factor on 0-4,
then only the chosen one on 5-9 with `axbench generate --report-half`). Other groups are scored on all their answers.

Outputs: per_answer.csv, per_concept.csv, summary.csv + summary.md (rows = methods, columns = settings; an attacked
group's column is "<setting> [suppression]"; a second table gives every cell's number of concepts), scores.json,
score_by_method.png and, when utility results and attacked groups both exist, utility_vs_robustness.png.

A score is comparable only over the same concepts, so (S1) a ratings folder the judge did not finish is refused, and
so is a column whose methods were rated on different concept sets, unless `allow_mixed_concepts`: the table then
carries a warning naming each method's concepts.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict

from prosv_jax.files import write_atomic, write_json
from .records import read_json, read_jsonl
from .rubric import FACTORS
from .scores import answer_score, score_concepts, select_factor

RATING_FIELDS = ("method", "setting", "concept_id", "concept", "instruction_pos", "ratings")


def find_rating_dirs(paths) -> list[str]:
    """Folders holding judge.json under (or at) each path."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"ratings folder {path} not found")
        for root, dirs, files in os.walk(path):
            dirs.sort()
            if "judge.json" in files:
                found.append(root)
                dirs[:] = []  # not into its cache
    if not found:
        raise ValueError(f"no ratings under {list(paths)} (no judge.json); run `prosv-jax axbench judge` first")
    return sorted(set(found))


def check_complete(folder: str) -> None:
    """Refuses a ratings folder the judge did not finish: its judge_report.json is missing or "partial", or a concept
    of its generations folder (when that is still there) has no rating file."""
    from .answers import concept_files
    from .rating import JUDGE_FILE, REPORT_FILE

    report_path = os.path.join(folder, REPORT_FILE)
    generations = read_json(os.path.join(folder, JUDGE_FILE)).get("generations")
    rerun = (f"finish it with `prosv-jax axbench judge --generations {generations} --out {folder}`"
             if generations else "rerun `prosv-jax axbench judge` into it")
    if not os.path.isfile(report_path):
        raise ValueError(f"ratings folder {folder} has no {REPORT_FILE}: its judge run did not finish; {rerun}")
    report = read_json(report_path)
    if report.get("status") != "complete":
        raise ValueError(f"ratings folder {folder} is partial (the judge stopped; concepts rated: "
                         f"{report.get('written')}): {rerun}")
    if generations and os.path.isdir(generations):
        missing = sorted(set(concept_files(generations)) - set(concept_files(folder)))
        if missing:
            raise ValueError(f"ratings folder {folder} lacks concept(s) {missing} of {generations}: {rerun}")


def load_ratings(paths) -> list[dict]:
    """Every rated answer under `paths` (complete ratings folders only: see `check_complete`)."""
    records, seen = [], {}
    for folder in find_rating_dirs(paths):
        check_complete(folder)
        for name in sorted(os.listdir(folder)):
            if not (name.startswith("c") and name.endswith(".jsonl")):
                continue
            path = os.path.join(folder, name)
            for rec in read_jsonl(path, RATING_FIELDS, "rating record"):
                ratings = rec["ratings"]
                if not isinstance(ratings, dict) or any(f not in ratings for f in FACTORS):
                    raise ValueError(f"{path}: a record's ratings lack one of {list(FACTORS)}")
                key = (rec["method"], rec["setting"], rec.get("attack"), rec["concept_id"], rec["instruction_pos"],
                       rec.get("factor") if rec.get("mode") == "sweep" else None)
                if key in seen:
                    raise ValueError(f"the same answer slot {key} is rated twice ({seen[key]} and {path}); give each "
                                     "ratings folder once")
                seen[key] = path
                records.append(rec)
    if not records:
        raise ValueError(f"no rated answers under {list(paths)}")
    return records


def _triple(rec) -> tuple[float, float, float]:
    return tuple(float(rec["ratings"][f]) for f in FACTORS)


def column_of(setting: str, attack) -> str:
    return setting if not attack else f"{setting} [{attack}]"


def score_groups(records: list[dict]) -> dict:
    """{(method, setting, attack): {"overall", "per_concept": {cid: row}, "selection": bool, "answers": [...]}}."""
    groups: dict = defaultdict(list)
    for rec in records:
        groups[(rec["method"], rec["setting"], rec.get("attack"))].append(rec)
    out = {}
    for key, recs in groups.items():
        sweep = any(r.get("mode") == "sweep" for r in recs)
        if sweep and not all(r.get("mode") == "sweep" for r in recs):
            raise ValueError(f"method {key[0]!r} ({key[1]}) mixes a factor sweep with other answers; give the sweep "
                             "its own --method label")
        by_concept: dict = defaultdict(list)
        for r in recs:
            by_concept[int(r["concept_id"])].append(r)
        per_concept, answers = {}, []
        if sweep:
            table = {}
            for cid, rs in by_concept.items():
                by_factor: dict = defaultdict(dict)
                for r in rs:
                    by_factor[float(r["factor"])][int(r["instruction_pos"])] = r
                table[cid] = {}
                for f, slots in by_factor.items():
                    if sorted(slots) not in (list(range(5)), list(range(10))):
                        raise ValueError(f"{key}: concept {cid}, factor {f:g}: factor selection needs instructions "
                                         f"0-4 at every factor and 5-9 at least at the chosen one, got positions "
                                         f"{sorted(slots)}; give the ratings of both halves of the grid")
                    table[cid][f] = [_triple(slots[k]) for k in range(len(slots))]
            sel = select_factor(table)
            for cid, rs in by_concept.items():
                chosen = sel.chosen[cid]
                report = [r for r in rs if float(r["factor"]) == chosen and 5 <= int(r["instruction_pos"]) <= 9]
                trip = [_triple(r) for r in report]
                per_concept[cid] = {"score": sel.scores[cid], "n_answers": len(report), "chosen_factor": chosen,
                                    "concept": rs[0]["concept"],
                                    **{f"{f}_mean": sum(t[j] for t in trip) / len(trip) for j, f in
                                       enumerate(FACTORS)}}
                for r in rs:
                    pos = int(r["instruction_pos"])
                    use = "select" if pos < 5 else ("report" if float(r["factor"]) == chosen and pos < 10 else "-")
                    answers.append((r, answer_score(_triple(r)), use))
            overall = sel.overall
        else:
            scores = score_concepts({cid: [_triple(r) for r in rs] for cid, rs in by_concept.items()})
            for cid, rs in by_concept.items():
                per_concept[cid] = {"score": scores.per_concept[cid], "n_answers": len(rs), "chosen_factor": None,
                                    "concept": rs[0]["concept"],
                                    **{f"{f}_mean": scores.factor_means[cid][f] for f in FACTORS}}
                answers += [(r, answer_score(_triple(r)), "all") for r in rs]
            overall = scores.overall
        out[key] = {"overall": overall, "per_concept": dict(sorted(per_concept.items())), "selection": sweep,
                    "answers": answers, "n_concepts": len(per_concept)}
    return dict(sorted(out.items(), key=lambda kv: (str(kv[0][1]), str(kv[0][2]), str(kv[0][0]))))


def concept_set_warnings(groups: dict, allow_mixed_concepts: bool = False) -> list[str]:
    """One line per column whose methods were scored on different concept sets; raises unless allowed (S1)."""
    by_column: dict = defaultdict(dict)
    for (method, setting, attack), g in groups.items():
        by_column[column_of(setting, attack)][method] = tuple(sorted(g["per_concept"]))
    lines = []
    for column, sets in by_column.items():
        if len(set(sets.values())) > 1:
            lines.append(f"column {column!r} compares methods over different concepts: "
                         + "; ".join(f"{m}: {list(ids)}" for m, ids in sets.items()))
    if lines and not allow_mixed_concepts:
        raise ValueError(lines[0] + ". Rate every method on the same concepts (or score them separately), or pass "
                         "--allow-mixed-concepts to print the table with a warning")
    return lines


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def summary_table(groups: dict) -> tuple[list[str], list[str], dict]:
    """(methods, columns, {(method, column): overall})."""
    methods, columns, cells = [], [], {}
    for (method, setting, attack), g in groups.items():
        col = column_of(setting, attack)
        if method not in methods:
            methods.append(method)
        if col not in columns:
            columns.append(col)
        cells[(method, col)] = g["overall"]
    columns.sort(key=lambda c: ("[" in c, c))
    return methods, columns, cells


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def load_utility(paths) -> list[dict]:
    from .utility import UTILITY_FILE

    rows = []
    for path in paths or []:
        file = path if os.path.isfile(path) else os.path.join(path, UTILITY_FILE)
        rows += read_json(file)["rows"]
    return rows


def write_report(groups: dict, out: str, utility_rows: list[dict] | None = None,
                 allow_mixed_concepts: bool = False) -> dict:
    """Writes every table and plot; returns {name: path}. Columns over different concept sets are refused unless
    `allow_mixed_concepts` (then flagged in summary.md and scores.json)."""
    warnings = concept_set_warnings(groups, allow_mixed_concepts)
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, v) for k, v in (
        ("per_answer", "per_answer.csv"), ("per_concept", "per_concept.csv"), ("summary_csv", "summary.csv"),
        ("summary_md", "summary.md"), ("scores", "scores.json"), ("plot", "score_by_method.png"))}
    rows = [["method", "setting", "attack", "concept_id", "instruction_pos", "instruction_index", "factor",
             *FACTORS, "score", "used"]]
    for (method, setting, attack), g in groups.items():
        for r, score, use in g["answers"]:
            rows.append([method, setting, attack or "", r["concept_id"], r["instruction_pos"],
                         r.get("instruction_index", ""), "" if r.get("factor") is None else r["factor"],
                         *_triple(r), f"{score:.6g}", use])
    write_atomic(paths["per_answer"], _csv(rows))
    rows = [["method", "setting", "attack", "concept_id", "concept", "n_answers", "score", "concept_rating_mean",
             "instruction_rating_mean", "fluency_rating_mean", "chosen_factor"]]
    for (method, setting, attack), g in groups.items():
        for cid, c in g["per_concept"].items():
            rows.append([method, setting, attack or "", cid, c["concept"], c["n_answers"], f"{c['score']:.6g}",
                         *[f"{c[f + '_mean']:.6g}" for f in FACTORS],
                         "" if c["chosen_factor"] is None else c["chosen_factor"]])
    write_atomic(paths["per_concept"], _csv(rows))
    methods, columns, cells = summary_table(groups)
    fmt = lambda m, c: f"{cells[(m, c)]:.3f}" if (m, c) in cells else "-"  # noqa: E731
    write_atomic(paths["summary_csv"], _csv([["method", *columns]] + [[m, *[fmt(m, c) for c in columns]]
                                                                        for m in methods]))
    md = "AxBench steering score (0-2, higher is better; mean over concepts)\n\n"
    md += markdown_table(["method", *columns], [[m, *[fmt(m, c) for c in columns]] for m in methods])
    n = {(m, column_of(s, a)): g["n_concepts"] for (m, s, a), g in groups.items()}
    md += "\nConcepts scored per cell\n\n"
    md += markdown_table(["method", *columns], [[m, *[str(n[(m, c)]) if (m, c) in n else "-" for c in columns]]
                                                for m in methods])
    for line in warnings:
        md += f"\nWARNING: {line}\n"
    if utility_rows:
        tasks = sorted({r["task"] for r in utility_rows})
        umethods = list(dict.fromkeys(f"{r['method']} ({r['setting']})" for r in utility_rows))
        acc = {(f"{r['method']} ({r['setting']})", r["task"]): r["accuracy"] for r in utility_rows}
        md += "\nUtility (accuracy, greedy; mean over the steerings of the first K concepts)\n\n"
        md += markdown_table(["method", *tasks], [[m, *[f"{acc[(m, t)]:.3f}" if (m, t) in acc else "-"
                                                        for t in tasks]] for m in umethods])
    write_atomic(paths["summary_md"], md)
    write_json(paths["scores"], {
        "groups": [{"method": m, "setting": s, "attack": a, "overall": g["overall"], "factor_selection": g["selection"],
                    "n_concepts": g["n_concepts"], "per_concept": {str(k): v for k, v in g["per_concept"].items()}}
                   for (m, s, a), g in groups.items()],
        "warnings": warnings, "utility": utility_rows or []})
    plot_scores(methods, columns, cells, paths["plot"])
    if utility_rows and any(a for (_, _, a) in groups):
        paths["tradeoff"] = os.path.join(out, "utility_vs_robustness.png")
        if not plot_tradeoff(groups, utility_rows, paths["tradeoff"]):
            del paths["tradeoff"]
    return paths


def plot_scores(methods, columns, cells, path) -> None:
    from prosv_jax.figures import save_figure, subplots

    fig, ax = subplots(figsize=(max(5, 1.2 * len(methods) * max(1, len(columns)) ** 0.5 + 2), 4))
    width = 0.8 / max(1, len(columns))
    for j, col in enumerate(columns):
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(methods))]
        ax.bar(xs, [cells.get((m, col), 0.0) for m in methods], width, label=col)
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
    ax.set_ylabel("steering score (0-2)")
    ax.set_title("AxBench steering score by method")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_tradeoff(groups, utility_rows, path) -> bool:
    """Utility (mean accuracy over tasks) vs steering score under attack, one point per (method, setting)."""
    from prosv_jax.figures import save_figure, subplots

    util: dict = defaultdict(list)
    for r in utility_rows:
        util[(r["method"], r["setting"])].append(r["accuracy"])
    points = [(m, s, sum(util[(m, s)]) / len(util[(m, s)]), g["overall"]) for (m, s, a), g in groups.items()
              if a and (m, s) in util]
    if not points:
        return False
    fig, ax = subplots(figsize=(5.5, 4))
    for m, s, x, y in points:
        ax.scatter([x], [y])
        ax.annotate(m, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("utility: accuracy (mean over tasks)")
    ax.set_ylabel("steering score under suppression attack")
    ax.set_title("utility vs robustness")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return True
