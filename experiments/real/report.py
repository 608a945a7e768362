"""The study's results folder from its stage outputs: tables with 95% intervals over concepts, claim checks, figures.

    python experiments/real/report.py --study outputs/real/smollm2 --out experiments/results/real

The study's config is read from <study>/study_config.json (written by `study.py run`).

Writes into --out: per_answer.csv and per_concept.csv (the `axbench score` tables, plus the probe judge's raw
metrics per answer; per_concept_dev.csv for the dev-only variants), sacrifice.csv, detectors.csv (held-out AUROC per concept and candidate evaluator block),
stages.csv (wall clock per stage), summary.md / summary.json (the headline table, the dev checks, the claims), and
the figures concept_vs_sacrifice.png, factor_sweeps.png, plus examples.md (example answers per method).

Concepts whose detector's held-out AUROC is below the study's evaluator.min_auroc (or --min-auroc) are left out of the
headline table and the claims and reported in a table of their own.

Intervals: mean over concepts +- t(0.975, n-1) * sd / sqrt(n); a claim compares two methods on the same concepts by
the paired differences' interval: "holds" when it lies on the claimed side of 0, "reversed" when on the other side,
"not resolved" when it contains 0 (or fewer than 2 concepts).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import shutil
import sys
from collections import defaultdict

import numpy as np

# The paper's numbers beside ours (method.md, Gemma-2-2B L10 column of the headline table).
PAPER_SCORES = {"Prompting": 0.698, "FSSV Lang (factor selected)": 0.663, "FSSV Lang": 0.736, "PrOSV Lang": 0.758,
                "PrOSV SimPO": 0.803, "DiffMean (factor selected)": 0.297}

# (claim, method A, method B, quantity, direction): the claim is that A - B has the sign of `direction`.
CLAIMS = [
    ("PrOSV Lang with its learned factor scores at least as well as FSSV Lang with the 14-factor search",
     "PrOSV Lang", "FSSV Lang (factor selected)", "score", +1),
    ("Joint training needs no factor search: FSSV Lang at its learned factor scores at least as well as searched",
     "FSSV Lang", "FSSV Lang (factor selected)", "score", +1),
    ("PrOSV scores higher than FSSV (both jointly trained, Lang)", "PrOSV Lang", "FSSV Lang", "score", +1),
    ("SimPO beats Lang for PrOSV", "PrOSV SimPO", "PrOSV Lang", "score", +1),
    ("PrOSV costs the model less of its general ability than FSSV (sacrifice, lower is better)",
     "PrOSV Lang", "FSSV Lang", "sacrifice", -1),
    ("PrOSV costs less than FSSV at its searched factor (sacrifice)", "PrOSV Lang", "FSSV Lang (factor selected)",
     "sacrifice", -1),
    ("PrOSV keeps the answer on the instruction better than FSSV (instruction rating)", "PrOSV Lang", "FSSV Lang",
     "instruction_rating_mean", +1),
    ("PrOSV keeps the answer more fluent than FSSV (fluency rating)", "PrOSV Lang", "FSSV Lang",
     "fluency_rating_mean", +1),
    ("FSSV brings the concept in more than PrOSV (concept rating)", "FSSV Lang", "PrOSV Lang",
     "concept_rating_mean", +1),
    ("PrOSV Lang beats DiffMean (factor selected)", "PrOSV Lang", "DiffMean (factor selected)", "score", +1),
    ("Prompting is a strong baseline: PrOSV Lang does not beat it", "Prompting", "PrOSV Lang", "score", +1),
]


def interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the 95% t-interval of the mean over `values` (low = high = nan when n < 2)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def fmt(ci, digits: int = 3) -> str:
    mean, low, high, n = ci
    if n == 0:
        return "-"
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: str, rows: list[dict]) -> None:
    from prosv_jax.files import write_atomic
    import io

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def raw_metrics(study: str) -> dict[tuple, dict]:
    """{(method, setting, attack, concept id, instruction pos, factor): the probe judge's raw metrics}."""
    out = {}
    for path in glob.glob(os.path.join(study, "*", "*", "ratings", "c*.jsonl")):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                metrics = {}
                for reply in (r.get("judge_replies") or {}).values():
                    try:
                        metrics.update(json.loads(reply))
                    except (TypeError, ValueError):
                        pass
                key = (r["method"], r["setting"], r.get("attack") or "", int(r["concept_id"]),
                       int(r["instruction_pos"]), "" if r.get("factor") is None else float(r["factor"]))
                out[key] = {**metrics, "factor_scale": r.get("factor_scale"), "answer": r["answer"],
                            "instruction": r["instruction"], "concept": r["concept"]}
    return out


def headline(per_concept: list[dict], sacrifice: dict, main_setting: str,
             concepts: set[int] | None = None) -> tuple[list[dict], dict]:
    """Rows of the headline table (main column, unattacked + attacked) and {method: {quantity: {cid: value}}}, over
    `concepts` (None: all)."""
    values: dict = defaultdict(lambda: defaultdict(dict))
    for r in per_concept:
        if r["setting"] != main_setting or (concepts is not None and int(r["concept_id"]) not in concepts):
            continue
        name = r["method"] + (" [suppression]" if r["attack"] else "")
        for q in ("score", "concept_rating_mean", "instruction_rating_mean", "fluency_rating_mean"):
            values[name][q][int(r["concept_id"])] = float(r[q])
    for (method, cid), value in sacrifice.items():
        if method in values and (concepts is None or cid in concepts):
            values[method]["sacrifice"][cid] = value
    rows = []
    for name in sorted(values, key=lambda m: ("[" in m, m)):
        v = values[name]
        rows.append({"method": name, "concepts": len(v["score"]),
                     **{q: fmt(interval(v[q].values())) for q in ("score", "concept_rating_mean",
                                                                  "instruction_rating_mean", "fluency_rating_mean")},
                     "sacrifice": fmt(interval(v["sacrifice"].values()), 4) if v.get("sacrifice") else "-",
                     "paper (Gemma-2-2B L10)": PAPER_SCORES.get(name, "")})
    return rows, values


def claim_checks(values: dict) -> list[dict]:
    out = []
    for text, a, b, quantity, direction in CLAIMS:
        va, vb = values.get(a, {}).get(quantity, {}), values.get(b, {}).get(quantity, {})
        shared = sorted(set(va) & set(vb))
        ci = interval([va[c] - vb[c] for c in shared])
        if ci[3] < 2 or math.isnan(ci[1]):
            verdict = "not measured" if ci[3] == 0 else "not resolved"
        elif (ci[1] > 0 if direction > 0 else ci[2] < 0):
            verdict = "holds"
        elif (ci[2] < 0 if direction > 0 else ci[1] > 0):
            verdict = "reversed"
        else:
            verdict = "not resolved"
        out.append({"claim": text, "A": a, "B": b, "quantity": quantity,
                    "A - B (95% CI)": fmt(ci, 4), "concepts": ci[3], "verdict": verdict})
    return out


def dev_checks(per_concept: list[dict], dev: list[int]) -> list[dict]:
    """PrOSV Lang on the dev concepts in every setting it was run in (layer sweep, released, float32)."""
    rows = []
    groups: dict = defaultdict(dict)
    for r in per_concept:
        if int(r["concept_id"]) in dev and not r["attack"] and r["method"].startswith("PrOSV Lang"):
            groups[(r["method"], r["setting"])][int(r["concept_id"])] = r
    for (method, setting), by_concept in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows.append({"method": method, "setting": setting, "concepts": len(by_concept),
                     **{q: fmt(interval(float(r[q]) for r in by_concept.values()))
                        for q in ("score", "concept_rating_mean", "instruction_rating_mean", "fluency_rating_mean")}})
    return rows


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(none yet)\n"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_concept_vs_sacrifice(values: dict, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for name, v in values.items():
        if "[" in name or not v.get("sacrifice"):
            continue
        x, y = interval(v["sacrifice"].values()), interval(v["score"].values())
        xerr = None if math.isnan(x[1]) else [[x[0] - x[1]], [x[2] - x[0]]]
        yerr = None if math.isnan(y[1]) else [[y[0] - y[1]], [y[2] - y[0]]]
        ax.errorbar([x[0]], [y[0]], xerr=xerr, yerr=yerr, marker="o", capsize=3, label=name)
    ax.set_xlabel("sacrifice: NLL of GPT-4's answers, steered - unsteered (nats/token)")
    ax.set_ylabel("steering score (0-2)")
    ax.set_title("Score vs sacrifice per method (95% intervals over concepts)")
    ax.axvline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_factor_sweeps(per_answer: list[dict], raw: dict, path: str) -> bool:
    """Mean ratings over concepts and the selection half's instructions (0-4, answered at every factor) vs the
    factor's multiple of the trained one, per swept method."""
    from matplotlib.figure import Figure

    sweeps: dict = defaultdict(lambda: defaultdict(list))
    for r in per_answer:
        if r["attack"] or not r["method"].endswith("(factor selected)") or r["used"] != "select":
            continue
        key = (r["method"], r["setting"], "", int(r["concept_id"]), int(r["instruction_pos"]), float(r["factor"]))
        scale = (raw.get(key) or {}).get("factor_scale")
        if scale is None:
            continue
        for q in ("score", "concept", "instruction", "fluency"):
            sweeps[r["method"]][(q, float(scale))].append(float(r[q]))
    if not sweeps:
        return False
    fig = Figure(figsize=(5 * len(sweeps), 4))
    for k, (method, table) in enumerate(sorted(sweeps.items())):
        ax = fig.add_subplot(1, len(sweeps), k + 1)
        for q in ("score", "concept", "instruction", "fluency"):
            scales = sorted({s for (qq, s) in table if qq == q})
            ax.plot(scales, [np.mean(table[(q, s)]) for s in scales], marker=".", label=q)
        ax.set_xscale("log")
        ax.set_xlabel("factor / trained factor (DiffMean: / |mean difference|)")
        ax.set_ylabel("mean rating on instructions 0-4 (0-2)")
        ax.set_title(method, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def examples(raw: dict, per_answer: list[dict], main_setting: str, per_method: int = 4) -> str:
    """One page per method: its answers to the first instructions of the first concepts, with the three ratings."""
    text = "# Example answers per method\n\nRatings (0-2) from the probe judge: concept / instruction / fluency.\n"
    by_method: dict = defaultdict(list)
    for r in per_answer:
        if r["setting"] != main_setting or r["attack"] or r["used"] == "-":
            continue
        if r["method"].endswith("(factor selected)") and r["used"] != "report":
            continue
        by_method[r["method"]].append(r)
    for method in sorted(by_method):
        text += f"\n## {method}\n"
        rows = sorted(by_method[method], key=lambda r: (int(r["concept_id"]), int(r["instruction_pos"])))
        picked = [r for r in rows if int(r["instruction_pos"]) in (5, 6)][:per_method]
        for r in picked:
            key = (r["method"], r["setting"], "", int(r["concept_id"]), int(r["instruction_pos"]),
                   "" if r["factor"] == "" else float(r["factor"]))
            info = raw.get(key, {})
            answer = info.get("answer", "").strip().replace("\n", "\n> ")
            text += (f"\n**Concept {r['concept_id']}** ({info.get('concept', '')}); instruction: "
                     f"{info.get('instruction', '').strip()[:200]}\n\nratings {float(r['concept']):.2f} / "
                     f"{float(r['instruction']):.2f} / {float(r['fluency']):.2f}"
                     + (f", factor {float(r['factor']):.3g}" if r["factor"] else "") + f"\n\n> {answer}\n")
    return text


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import ml_collections

    from prosv_jax.files import write_atomic, write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True, help="the study's output folder (its config's `out`)")
    parser.add_argument("--out", required=True, help="the results folder")
    parser.add_argument("--min-auroc", type=float, help="concepts whose detector's held-out AUROC is below this are "
                                                        "reported apart (default: the study's evaluator.min_auroc)")
    args = parser.parse_args(argv)
    study, out = os.path.abspath(args.study), os.path.abspath(args.out)
    config_path = os.path.join(study, "study_config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: {study} is not a study folder (run `study.py run` first)")
    with open(config_path) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    report = os.path.join(study, "report")
    if not os.path.isfile(os.path.join(report, "per_concept.csv")):
        raise FileNotFoundError(f"{report}/per_concept.csv not found: run the study's score stage first")
    os.makedirs(out, exist_ok=True)
    main_setting = f"{cfg.model.label} L{cfg.model.layer}"
    per_concept = read_csv(os.path.join(report, "per_concept.csv"))
    per_answer = read_csv(os.path.join(report, "per_answer.csv"))
    raw = raw_metrics(study)
    for r in per_answer:
        key = (r["method"], r["setting"], r["attack"], int(r["concept_id"]), int(r["instruction_pos"]),
               "" if r["factor"] == "" else float(r["factor"]))
        metrics = raw.get(key, {})
        for m in ("p_concept", "pmi_per_token", "nll_per_token", "factor_scale"):
            r[m] = "" if metrics.get(m) is None else metrics[m]
    write_csv(os.path.join(out, "per_answer.csv"), per_answer)
    shutil.copyfile(os.path.join(report, "per_concept.csv"), os.path.join(out, "per_concept.csv"))
    if os.path.isfile(os.path.join(study, "report_dev", "per_concept.csv")):
        shutil.copyfile(os.path.join(study, "report_dev", "per_concept.csv"), os.path.join(out, "per_concept_dev.csv"))
    sacrifice_rows = [r for path in sorted(glob.glob(os.path.join(study, "sacrifice", "*", "sacrifice.csv")))
                      for r in read_csv(path)]
    write_csv(os.path.join(out, "sacrifice.csv"), sacrifice_rows)
    sacrifice = {(r["method"], int(r["concept_id"])): float(r["sacrifice"]) for r in sacrifice_rows}
    detector_rows = []
    for path in sorted(glob.glob(os.path.join(study, "detector_layers", "L*", "detectors.csv"))):
        layer = os.path.basename(os.path.dirname(path))[1:]
        detector_rows += [{"evaluator_block": layer, "use": "layer choice (dev concepts)", **r} for r in read_csv(path)]
    final = os.path.join(study, "detectors", "detectors.csv")
    if os.path.isfile(final):
        detector_rows += [{"evaluator_block": "chosen", "use": "the study's detectors", **r} for r in read_csv(final)]
    write_csv(os.path.join(out, "detectors.csv"), detector_rows)
    stage_rows = []
    for path in glob.glob(os.path.join(study, "stages", "*.json")):
        with open(path) as f:
            s = json.load(f)
        stage_rows.append({"stage": s["stage"], "wall_s": s["wall_s"], "concepts": len(s.get("concepts", [])),
                           "finished": s["finished"]})
    stage_rows.sort(key=lambda r: r["finished"])  # the order they ran in (file times change with a checkout)
    write_csv(os.path.join(out, "stages.csv"), stage_rows)

    from prosv_jax.evaluation.concept_detector import MIN_AUROC

    min_auroc = cfg.evaluator.get("min_auroc", MIN_AUROC) if args.min_auroc is None else args.min_auroc
    chosen_detectors = {int(r["concept_id"]): float(r["heldout_auroc"]) for r in detector_rows
                        if r["evaluator_block"] == "chosen"}
    flagged = sorted(c for c, auroc in chosen_detectors.items() if auroc < min_auroc)
    trusted = {int(r["concept_id"]) for r in per_concept} - set(flagged)
    rows, values = headline(per_concept, sacrifice, main_setting, trusted)
    flagged_rows = headline(per_concept, sacrifice, main_setting, set(flagged))[0] if flagged else []
    claims = claim_checks(values)
    dev_table = os.path.join(study, "report_dev", "per_concept.csv")
    dev_rows = read_csv(dev_table) if os.path.isfile(dev_table) else []
    dev = dev_checks(per_concept + dev_rows, list(cfg.dev_concepts))
    plot_concept_vs_sacrifice(values, os.path.join(out, "concept_vs_sacrifice.png"))
    plot_factor_sweeps(per_answer, raw, os.path.join(out, "factor_sweeps.png"))
    write_atomic(os.path.join(out, "examples.md"), examples(raw, per_answer, main_setting))
    final_aurocs = [float(r["heldout_auroc"]) for r in detector_rows if r["evaluator_block"] == "chosen"]
    md = (f"# Judge-free study: {cfg.model.label} block {cfg.model.layer}, evaluator {cfg.evaluator.label}\n\n"
          f"Means over concepts with 95% t-intervals. Score: AxBench's harmonic mean of the probe judge's three "
          f"0-2 ratings. Sacrifice: NLL of GPT-4's AlpacaEval answers, steered minus unsteered (nats/token).\n\n"
          f"Concepts rated: {sorted({int(r['concept_id']) for r in per_concept})} (of concept10's 0-9); training seeds "
          f"{list(cfg.train.seeds)}.\n\n"
          f"## Headline table ({main_setting})\n\n"
          + (f"Concepts {flagged} are left out: their detectors' held-out AUROC is below {min_auroc} (below).\n\n"
             if flagged else "") + markdown(rows)
          + (f"\n## Concepts with a weak detector (AUROC < {min_auroc}), apart\n\n" + markdown(flagged_rows)
             if flagged else "")
          + "\n## Claims\n\n" + markdown(claims)
          + "\n## Dev concepts: PrOSV Lang across layers, hyperparameters and dtypes\n\n" + markdown(dev)
          + "\n## Detectors\n\nHeld-out AUROC of the study's detectors: "
          + (", ".join(f"{a:.3f}" for a in final_aurocs) if final_aurocs else "-") + " (detectors.csv)\n"
          + "\n## Wall clock per stage (2 cores)\n\n" + markdown(stage_rows))
    write_atomic(os.path.join(out, "summary.md"), md)
    write_json(os.path.join(out, "summary.json"), {"headline": rows, "claims": claims, "dev": dev,
                                                  "flagged_concepts": flagged, "headline_flagged": flagged_rows,
                                                  "min_auroc": min_auroc,
                                                  "stages": stage_rows, "setting": main_setting})
    print(md)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
