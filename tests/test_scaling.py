"""Scaling studies: a planted SV is recovered (and not by a broken recipe), the analysis recovers a known exponent,
a sweep resumes without redoing finished groups, and the SGD option of the optimiser."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from prosv_jax.scaling import analysis, planted
from prosv_jax.scaling import sweep as sweep_lib
from prosv_jax.scaling.planted import make_planted_task, random_llama, run_metrics, train_students
from prosv_jax.scaling.sweep import Arm, Family, SweepSpec, TaskSpec, run_sweep
from prosv_jax.training import trainer as trainer_lib
from prosv_jax.training.optim import OptimConfig, make_optimizer, scale_by_group_lr
from prosv_jax.training.trainer import RunSpec, TrainConfig


@pytest.fixture(scope="module")
def task():
    model = random_llama(64, depth=2, vocab=256, seed=0, logit_scale=2.0)
    return make_planted_task(model, layer=0, positions="all", strength=1.0, n_train=192, n_eval=32, prompt_len=4,
                             response_len=8, seed=0)


def test_the_planted_teacher_changes_the_model_and_sets_a_loss_floor(task):
    stats = task.stats
    assert stats["teacher_plain_kl"] > 0.5  # the planted edit moves the next-token distributions a lot ...
    assert stats["teacher_vs_plain_token_diff"] > 0.5  # ... and the sampled text
    assert stats["teacher_entropy"] < stats["plain_nll"] - 0.5 < stats["log_vocab"]
    assert task.floor == stats["teacher_entropy"]


def test_a_planted_sv_is_recovered_at_a_sane_setting_and_not_at_a_broken_one(task, tmp_path):
    train = TrainConfig(epochs=3, batch_size=8, runs_per_program=1, progress=False)
    sane = RunSpec("sane", seed=0, init=(("beta", 1.0), ("c", 1.0)), lrs=(("factor", 3.0), ("direction", 0.1)))
    summaries = train_students(task, [sane], str(tmp_path / "sane"), train=train)
    good = run_metrics(task, str(tmp_path / "sane"), summaries, ["sane"], runs_per_program=1, window=8)["sane"]
    # alpha fixed to 1 (beta = 1/sqrt(n)), v only, at a tiny learning rate.
    broken = RunSpec("broken", seed=0, init=(("beta", 1 / math.sqrt(task.width)), ("c", 1.0)),
                     lrs=(("direction", 1e-4),))
    summaries = train_students(task, [broken], str(tmp_path / "broken"), train=train,
                               kind_fields={"train_factor": False})
    bad = run_metrics(task, str(tmp_path / "broken"), summaries, ["broken"], runs_per_program=1, window=8)["broken"]

    plain_excess = task.stats["plain_nll"] - task.floor
    assert good["cos_edit"] > 0.8 and good["cos_v"] > 0.8  # 0.90-0.92 over seeds; a random v gives ~0
    assert 0.5 < good["edit_norm"] / good["edit_norm_star"] < 1.5
    assert good["final_loss_smooth"] - task.floor < 0.15 * plain_excess  # near the teacher's entropy
    assert good["eval_kl"] < 0.15 * task.stats["eval_plain_kl"]
    assert good["steps_to_threshold"] is not None and not good["diverged"]
    assert abs(bad["cos_edit"]) < 0.4 and bad["alpha"] == pytest.approx(1.0)
    assert bad["final_loss_smooth"] - task.floor > 0.7 * plain_excess
    assert bad["eval_kl"] > 0.7 * task.stats["eval_plain_kl"] and bad["steps_to_threshold"] is None


def test_a_prompt_only_teacher_changes_the_answers_too(task):
    prosv = make_planted_task(task.model, layer=0, positions="f2+l2", strength=4.0, n_train=32, n_eval=16,
                              prompt_len=4, response_len=8, seed=1)
    assert prosv.stats["teacher_plain_kl"] > 0.05 and prosv.stats["teacher_vs_plain_token_diff"] > 0.3


# --- analysis ------------------------------------------------------------------------------------------------

def test_the_optimum_of_a_parabola_is_its_vertex_and_a_grid_end_is_flagged():
    lrs = np.logspace(-2, 2, 9)
    values = (np.log10(lrs) - np.log10(0.7)) ** 2
    lr, edge = analysis.optimum_1d(lrs, values)
    assert lr == pytest.approx(0.7, rel=1e-6) and not edge
    lr, edge = analysis.optimum_1d(lrs, -np.log10(lrs))
    assert lr == pytest.approx(100.0) and edge
    plateau = np.where((lrs >= 0.1) & (lrs <= 10), 0.0, 1.0)  # flat from 0.1 to 10: midpoint 1
    assert analysis.optimum_1d(lrs, plateau, "plateau") == (pytest.approx(1.0), False)


def synthetic_table(widths=(64, 128, 256, 512), exponent: float = 0.5, constant: float = 0.2, lrs=None,
                    seeds: int = 4, noise: float = 0.05, seed: int = 0):
    """Built here, not by the module under test (m15): the optimal factor lr is constant * n^exponent by
    construction, log10(eval_kl) = log10(0.02) + (log10 lr - log10 lr*)^2 + N(0, noise^2) per run; nothing diverges."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    lrs = np.logspace(-2, 3, 16) if lrs is None else np.asarray(lrs, np.float64)
    rows = []
    for n in widths:
        best = constant * n ** exponent
        for s in range(seeds):
            for lr in lrs:
                log_metric = math.log10(0.02) + (math.log10(lr) - math.log10(best)) ** 2
                rows.append({"width": n, "factor_lr": float(lr), "seed": s, "diverged": False,
                             "eval_plain_kl": np.inf, "eval_kl": 10 ** (log_metric + noise * rng.standard_normal())})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("exponent", [0.5, -0.5])
def test_the_analysis_recovers_a_known_exponent_from_synthetic_results(exponent):
    table = synthetic_table(widths=(64, 128, 256, 512, 1024), exponent=exponent, constant=0.5, seeds=4,
                                     noise=0.05, seed=3)
    opt = analysis.optimal_lrs(table, "factor_lr")
    fit = analysis.fit_power(opt["width"], opt["lr_opt"])
    boot = analysis.bootstrap_exponent(table, "factor_lr", n_boot=200)
    assert fit["ci"][0] <= exponent <= fit["ci"][1] and abs(fit["slope"] - exponent) < 0.1
    assert boot["ci"][0] <= exponent <= boot["ci"][1] and boot["ci"][1] - boot["ci"][0] < 0.3
    assert not opt["at_edge"].any()
    # A shifted truth is excluded: the interval is informative, not just wide.
    assert not fit["ci"][0] <= exponent + 0.5 <= fit["ci"][1]


def test_more_data_that_moves_the_optimum_shows_as_a_shift_beyond_its_error():
    def as_v_arm(table, batch):  # the synthetic factor-lr table recast as the eta_v arm at c = 1
        return table.rename(columns={"factor_lr": "direction_lr"}).assign(arm="v_fine", c=1.0, batch_size=batch,
                                                                          cos_edit=0.9)

    grid = dict(widths=(1024,), exponent=0.0, lrs=np.logspace(-3, 0, 31), seeds=3, noise=0.02)  # 0.1-decade steps
    sweep = as_v_arm(synthetic_table(constant=0.01, **grid), 64)
    moved = as_v_arm(synthetic_table(constant=0.02, seed=1, **grid), 128)
    same = as_v_arm(synthetic_table(constant=0.01, seed=2, **grid), 128)
    (shift,) = analysis.data_optimum_shift(sweep, moved)
    (still,) = analysis.data_optimum_shift(sweep, same)
    assert (shift["sweep_batch_size"], shift["more_data_batch_size"]) == (64, 128)
    assert abs(shift["shift_decades"] - np.log10(2)) < 2 * shift["shift_se"] and shift["shift_decades"] > 3 * shift[
        "shift_se"]
    assert abs(still["shift_decades"]) < 2 * still["shift_se"]
    assert shift["sweep_best_eval_kl"] == pytest.approx(sweep.groupby("direction_lr")["eval_kl"].apply(
        lambda k: 10 ** np.log10(k).mean()).min(), rel=1e-9)


@pytest.mark.parametrize("skew", [0.0, 10.0])
def test_the_vertex_interval_covers_the_true_optimum_at_its_stated_rate(skew):
    """Calibration over 200 synthetic sweeps (3 seeds, each shifting its whole curve by N(0, 0.1^2), noise 0.03
    decades; a parabola in log-lr, or one made steep on the high side as real sweeps are): the vertex +- t * se
    covers the true optimum at least about 95% of the time on a sqrt(2) grid; pairing the runs of a seed gives a
    smaller error than ignoring the seeds, and the grid's part of the error is smaller than on a x4 grid."""
    from scipy import stats

    rng = np.random.default_rng(0)
    covered, fit_fine, se_fine, se_coarse, se_unpaired = [], [], [], [], []
    for _ in range(200):
        truth = rng.uniform(-0.3, 0.3)
        for step, store in ((0.5 * math.log10(2), se_fine), (math.log10(4), se_coarse)):
            x = np.tile(np.arange(-6, 7) * step, 3)
            seeds = np.repeat(np.arange(3), 13)
            u = x - truth
            y = (u ** 2 + skew * np.maximum(u, 0) ** 3 + 0.1 * rng.standard_normal(3)[seeds]
                 + 0.03 * rng.standard_normal(x.size))
            fit = analysis.vertex_fit(10 ** x, y, seeds)
            store.append(fit["se"])
            if step < 0.2:
                assert fit["located"]
                covered.append(abs(fit["log10_lr"] - truth) <= stats.t.ppf(0.975, fit["dof"]) * fit["se"])
                se_unpaired.append(analysis.vertex_fit(10 ** x, y)["se_fit"])
                fit_fine.append(fit["se_fit"])
    assert np.mean(covered) >= 0.93
    assert np.median(fit_fine) < 0.75 * np.median(se_unpaired)
    assert np.median(se_fine) < np.median(se_coarse)


def test_the_weighted_fit_decides_when_precise_and_says_undecided_when_not():
    widths = [64, 128, 256, 512, 1024, 2048]
    x = np.log10(widths)
    rng = np.random.default_rng(1)
    precise = analysis.fit_power_weighted(widths, 0.5 * x + 0.02 * rng.standard_normal(6), [0.02] * 6)
    assert precise["ci"][0] < 0.5 < precise["ci"][1] and analysis.verdict(precise["ci"], 0.5) == "consistent"
    assert analysis.verdict(precise["ci"], 0.0) == "excluded"
    noisy = analysis.fit_power_weighted(widths, 0.5 * x + 0.3 * rng.standard_normal(6), [0.3] * 6)
    assert analysis.verdict(noisy["ci"], 0.5) == "undecided"
    # Stated errors 10x too small: the Birge ratio widens the interval to the scatter, and it still covers.
    understated = analysis.fit_power_weighted(widths, 0.5 * x + 0.1 * rng.standard_normal(6), [0.01] * 6)
    assert understated["birge"] > 3 and understated["ci"][0] < 0.5 < understated["ci"][1]
    assert analysis.verdict([float("nan")] * 2, 0.5) == "undecided"


def test_the_plateau_edges_move_with_the_plateau():
    """A flat optimum from 0.5 n^0.5 to 8 n^0.5 (a x16 plateau) on a sqrt(2) grid: both edges' slopes near +0.5."""
    import pandas as pd

    lrs = 2.0 ** np.arange(-2, 14, 0.5)
    rows = []
    for n in (64, 128, 256, 512, 1024, 2048):
        lo, hi = 0.5 * n ** 0.5, 8 * n ** 0.5
        for seed in range(2):
            for lr in lrs:
                out = max(math.log10(lo / lr), math.log10(lr / hi), 0.0)
                rows.append({"width": n, "factor_lr": lr, "seed": seed, "diverged": False, "eval_plain_kl": np.inf,
                             "eval_kl": 10 ** (-2 + 2 * out)})
    edges = analysis.plateau_edges(pd.DataFrame(rows), "factor_lr")
    for side in ("lower", "upper"):
        fit = analysis.fit_power_weighted([e["width"] for e in edges], [e[side]["log10_lr"] for e in edges],
                                          [e[side]["se"] for e in edges])
        assert fit["ci"][0] <= 0.5 <= fit["ci"][1] and abs(fit["slope"] - 0.5) < 0.1
        assert not any(e[side]["censored"] for e in edges)


def test_the_stability_edge_is_the_largest_lr_below_the_first_divergence():
    table = synthetic_table(widths=(64, 256), seeds=2, lrs=[1, 10, 100, 1000])
    table["diverged"] = (table["factor_lr"] >= np.where(table["width"] == 64, 100, 1e9)) | (
        (table["factor_lr"] == 1000) & (table["seed"] == 1))
    edge = analysis.stability_edge(table, "factor_lr").set_index("width")
    assert edge.loc[64, "edge"] == 10 and edge.loc[64, "first_fail"] == 100 and not edge.loc[64, "censored"]
    assert edge.loc[256, "edge"] == 100 and not edge.loc[256, "censored"]


# --- the sweep resumes ---------------------------------------------------------------------------------------

def tiny_spec(seeds=(0, 1)) -> SweepSpec:
    return SweepSpec(widths=(32,), arms=(Arm("alpha_lr", factor_lrs=(1.0, 10.0), direction_lrs=(0.05,), seeds=seeds),),
                     family=Family(depth=2, vocab=64, layer=0), runs_per_program=2,
                     task=TaskSpec(prompt_len=3, response_len=4, n_train=16, n_eval=8), epochs=1, batch_size=8)


def test_a_sweep_resumes_after_a_kill_without_redoing_finished_groups(tmp_path, monkeypatch):
    built = []
    original = trainer_lib.GroupData.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_lib.GroupData, "__init__", counting)
    out = str(tmp_path / "sweep")
    first, info = run_sweep(tiny_spec(), out, log=lambda m: None)
    assert len(first) == 4 and info["groups_total"] == 2 and info["groups_trained"] == 2 and len(built) == 2
    for column in ("width", "beta", "factor_lr", "c", "direction_lr", "seed", "eval_kl", "cos_edit", "final_loss",
                   "best_loss", "diverged", "curve", "edit_norm", "steps_to_threshold"):
        assert column in first.columns
    assert os.path.isfile(os.path.join(out, first["curve"][0]))

    again, info = run_sweep(tiny_spec(), out, log=lambda m: None)  # everything finished: nothing trains
    assert info["groups_trained"] == 0 and len(built) == 2
    assert again.equals(first)

    # A kill inside the second group, before its first checkpoint: no done.json, no checkpoint.
    group0 = os.path.join(out, "n32", "alpha_lr", "groups", "group-0000", "metrics.jsonl")
    before = os.stat(group0).st_mtime_ns
    group1 = os.path.join(out, "n32", "alpha_lr", "groups", "group-0001")
    os.remove(os.path.join(group1, "done.json"))
    shutil.rmtree(os.path.join(group1, "checkpoints"))
    resumed, info = run_sweep(tiny_spec(), out, log=lambda m: None)
    assert info["groups_trained"] == 1 and len(built) == 3
    assert os.stat(group0).st_mtime_ns == before
    np.testing.assert_allclose(resumed["eval_kl"], first["eval_kl"], rtol=1e-5)

    with pytest.raises(ValueError, match="another spec"):  # a changed grid would be matched to the wrong groups
        run_sweep(tiny_spec(seeds=(0, 1, 2)), out, log=lambda m: None)
    # The same grid at one more width: only the new width trains.
    extended, info = run_sweep(dataclasses.replace(tiny_spec(), widths=(32, 64)), out, log=lambda m: None)
    assert info["groups_trained"] == 2 and len(built) == 5 and sorted(set(extended["width"])) == [32, 64]
    np.testing.assert_allclose(extended[extended["width"] == 32]["eval_kl"], resumed["eval_kl"], rtol=1e-6)


# --- the SGD baseline's optimiser -------------------------------------------------------------------------------

def test_sgd_is_plain_gradient_descent_with_the_recipe_s_clipping_and_schedule():
    assert OptimConfig().optimizer == "adam"
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(optimizer="lion")
    labels = {"s": {"alpha": "factor", "v": "direction"}}
    params = {"s": {"alpha": jnp.asarray(2.0), "v": jnp.ones(4)}}
    grads = {"s": {"alpha": jnp.asarray(3.0), "v": jnp.full(4, 2.0)}}  # |grad v| = 4 > clip 1
    tx = make_optimizer(OptimConfig(optimizer="sgd"), labels, total_steps=4)
    updates, _ = tx.update(grads, tx.init(params), params)
    lrs = {"factor": jnp.asarray(0.1), "direction": jnp.asarray(0.5), "other": jnp.asarray(0.0)}
    step = scale_by_group_lr(updates, labels, lrs)
    assert float(step["s"]["alpha"]) == pytest.approx(-0.1 * 3.0)  # linear decay: fraction 1 at the first update
    np.testing.assert_allclose(np.asarray(step["s"]["v"]), -0.5 * np.full(4, 0.5), rtol=1e-6)  # clipped to norm 1
    adam = make_optimizer(OptimConfig(), labels, total_steps=4)
    adam_updates, _ = adam.update(grads, adam.init(params), params)
    assert float(adam_updates["s"]["alpha"]) == pytest.approx(1.0, rel=1e-4)  # Adam's first step: sign(g)


# --- refining grids, scaled data, the baselines' variants ---------------------------------------------------------

def test_factor_selection_rescales_a_weakened_teacher_back_to_the_teacher(task):
    steering, params = task.teacher()
    site = steering.sites[0].name
    half = {site: {**params[site], "alpha": params[site]["alpha"] / 2}}
    factor, kls = planted.select_factor(task, steering, half, (0.5, 1.0, 2.0, 4.0))
    assert factor == 2.0 and kls[2] < 1e-6 < kls[1]  # x2 is the teacher itself: KL 0 on the selection prompts


def scaled_spec(arms) -> SweepSpec:
    return SweepSpec(widths=(32, 64), arms=arms, family=Family(depth=2, vocab=64, layer=0), runs_per_program=3,
                     task=TaskSpec(prompt_len=3, response_len=4, n_train=16, n_eval=8), epochs=1, batch_size=4,
                     data_exponent=1.0, data_ref_width=32)


def test_a_refining_arm_centres_its_fine_grid_on_the_coarse_optimum_and_keeps_it_on_resume(tmp_path, monkeypatch):
    optims = {}
    original = trainer_lib.Trainer.__init__

    def spy(self, model, steering, datasets, out_dir, optim, *args, **kwargs):
        optims[os.path.basename(out_dir)] = optim
        original(self, model, steering, datasets, out_dir, optim, *args, **kwargs)

    monkeypatch.setattr(trainer_lib.Trainer, "__init__", spy)
    monkeypatch.setattr(sweep_lib, "Trainer", trainer_lib.Trainer)
    arms = (Arm("v", direction_lrs=(0.003, 0.03, 0.3, 3.0), factor_lrs=(1.0,)),
            Arm("v_fine", refine="v", refine_multipliers=(0.5, 1.0, 2.0), factor_lrs=(1.0,), seeds=(0, 1)),
            Arm("tied", tied_lrs=True, direction_lrs=(0.05,)),
            Arm("sgd_noclip", optimizer="sgd", clip_norm=None, factor_lrs=(1.0,), direction_lrs=(0.1,)),
            Arm("frozen", train_factor=False, alpha0s=(1.0,), direction_lrs=(0.1,), factor_search=(0.5, 1.0, 2.0)),
            Arm("only64", direction_lrs=(0.1,), widths=(64,)))
    out = str(tmp_path / "sweep")
    table, info = run_sweep(scaled_spec(arms), out, log=lambda m: None)

    for width, part in table.groupby("width"):
        coarse = part[part["arm"] == "v"].set_index("direction_lr")["eval_kl"]
        fine = part[part["arm"] == "v_fine"]
        best = coarse.idxmin()  # one seed: its KL is the mean
        np.testing.assert_allclose(sorted(fine["direction_lr"].unique()), [best / 2, best, best * 2], rtol=1e-9)
        assert len(fine) == 6 and (fine["refines"] == "v").all()
        # Data grows with width (batch 4 -> 8), steps per epoch stay 4.
        assert set(part["batch_size"]) == {4 * width // 32} and set(part["n_train"]) == {16 * width // 32}
    assert set(table.loc[table["arm"] == "only64", "width"]) == {64}
    assert (table.loc[table["arm"] == "tied", "factor_lr"] == table.loc[table["arm"] == "tied", "direction_lr"]).all()
    assert optims["sgd_noclip"].clip_norm is None and optims["sgd_noclip"].optimizer == "sgd"
    assert optims["v"].clip_norm == 1.0
    frozen = table[table["arm"] == "frozen"]
    assert frozen["search_factor"].isin([0.5, 1.0, 2.0]).all()
    np.testing.assert_allclose(frozen["alpha"], frozen["search_factor"], rtol=1e-6)  # alpha_0 = 1, frozen, rescaled

    # Resume: the fine grid is read back from grid.json (chosen once), and nothing trains again.
    grid_path = os.path.join(out, "n32", "v_fine", "grid.json")
    with open(grid_path) as f:
        stored = json.load(f)
    assert stored["refines"] == "v" and len(stored["lrs"]) == 3
    again, info = run_sweep(scaled_spec(arms), out, log=lambda m: None)
    assert info["groups_trained"] == 0 and again.equals(table)


def test_transfer_arms_carry_the_small_width_optimum_and_can_be_added_to_a_finished_sweep(tmp_path):
    from prosv_jax.scaling.analysis import data_check_table, summary_markdown, transfer_table

    coarse = (Arm("v", direction_lrs=(0.003, 0.03, 0.3, 3.0), factor_lrs=(1.0,)),)
    out = str(tmp_path / "sweep")
    first, _ = run_sweep(scaled_spec(coarse), out, log=lambda m: None)
    transfers = (Arm("v_scaled", refine="v", refine_multipliers=(1.0,), factor_lrs=(1.0,), transfer_from=32,
                     transfer_exponent=-0.5, widths=(64,)),
                 Arm("v_fixed", refine="v", refine_multipliers=(1.0,), factor_lrs=(1.0,), transfer_from=32,
                     widths=(64,)))
    table, info = run_sweep(scaled_spec(coarse + transfers), out, log=lambda m: None)  # arms added: only they train
    assert info["groups_trained"] == 2 and table[table["arm"] == "v"].equals(first[first["arm"] == "v"].reindex(
        columns=table.columns).astype(table.dtypes))
    small = first[first["width"] == 32].set_index("direction_lr")["eval_kl"]
    tuned = small.idxmin()
    lrs = table.set_index("arm")["direction_lr"]
    np.testing.assert_allclose([lrs["v_scaled"], lrs["v_fixed"]], [tuned * 2 ** -0.5, tuned], rtol=1e-9)
    assert (table["transfer_from"] == 32).sum() == 2
    with open(os.path.join(out, "timing.jsonl")) as f:  # the cost, arm by arm, as trained
        timed = [json.loads(line) for line in f]
    assert [(t["width"], t["arm"]) for t in timed] == [(32, "v"), (64, "v"), (64, "v_scaled"), (64, "v_fixed")]
    assert all(t["seconds"] > 0 for t in timed)

    rules = (("scaled", ("v",), {"direction_lr": -0.5}, "v_scaled"), ("fixed", ("v",), {}, "v_fixed"))
    moved = transfer_table(table, transfers=rules).set_index(["transfer", "width"])
    assert moved["exact"].tolist() == [False, True, False, True] and (moved["snap_decades"] == 0).all()
    at64 = table[table["width"] == 64]
    best = np.log10(at64["eval_kl"].min())
    for rule in ("scaled", "fixed"):
        kl = float(at64.loc[at64["arm"] == f"v_{rule}", "eval_kl"].iloc[0])
        assert moved.loc[(rule, 64), "regret_log10"] == pytest.approx(np.log10(kl) - best, abs=1e-6)
    check = data_check_table(table, arms=("v", "v_scaled", "v_fixed")).set_index("width")
    assert check["batch_size"].tolist() == [4, 8] and check.loc[64, "best_eval_kl"] == pytest.approx(
        at64.groupby("arm")["eval_kl"].min().min(), rel=1e-6)  # one seed: a cell's mean is its run
    text = summary_markdown({"runs": len(table), "widths": [32, 64], "metric": "eval_kl", "exponents": [],
                             "data_check": check.reset_index().to_dict(orient="records"),
                             "transfer": moved.reset_index().to_dict(orient="records")})
    assert "| fixed | 1.00 | " in text and f"{10 ** moved.loc[('fixed', 64), 'regret_log10']:.2f}*" in text
    with pytest.raises(ValueError, match="another spec .*'v'"):  # an arm kept under its name keeps its grid
        run_sweep(scaled_spec((Arm("v", direction_lrs=(0.1,)),) + transfers), out, log=lambda m: None)
    run_sweep(scaled_spec(coarse).restricted((32,)), out, log=lambda m: None)  # a call without the transfer arms
    with open(os.path.join(out, "spec.json")) as f:  # ... still remembers them, and every width
        held = json.load(f)
    assert [a["name"] for a in held["arms"]] == ["v", "v_scaled", "v_fixed"] and held["widths"] == [32, 64]
    assert held["arms"][0]["widths"] == [] and held["arms"][1]["widths"] == [64]
    with pytest.raises(ValueError, match="another spec .*'v_fixed'"):  # so a changed arm is caught after it
        run_sweep(scaled_spec(coarse + (dataclasses.replace(transfers[1], transfer_exponent=0.5),)), out,
                  log=lambda m: None)
    with pytest.raises(ValueError, match="include width 32"):
        run_sweep(dataclasses.replace(scaled_spec(coarse + transfers), widths=(64,)), str(tmp_path / "other"),
                  log=lambda m: None)
    with pytest.raises(ValueError, match="set refine"):
        Arm("orphan", transfer_from=32)


def test_a_refining_arm_must_follow_its_coarse_arm_and_match_a_slice_of_it():
    with pytest.raises(ValueError, match="not an earlier arm"):
        scaled_spec((Arm("fine", refine="v", refine_multipliers=(1.0,)), Arm("v")))
    with pytest.raises(ValueError, match="where the arm it refines"):
        scaled_spec((Arm("v", widths=(64,)), Arm("fine", refine="v", refine_multipliers=(1.0,))))
    with pytest.raises(ValueError, match="not the sweep's"):
        scaled_spec((Arm("v", widths=(128,)),))
    with pytest.raises(ValueError, match="one init"):
        Arm("fine", refine="v", refine_multipliers=(1.0,), betas=(1.0, 4.0))
    with pytest.raises(ValueError, match="train_factor=False"):
        Arm("searched", factor_search=(1.0, 2.0))
    coarse = sweep_lib.arm_runs(Arm("v", betas=(1.0,), direction_lrs=(0.1, 1.0)), 32)
    rows = [{**row, "eval_kl": 0.1, "diverged": False, "eval_plain_kl": 1.0} for _, row in coarse]
    with pytest.raises(ValueError, match="no run of v has beta=4"):
        sweep_lib.refined_grid(Arm("fine", refine="v", refine_multipliers=(1.0,), betas=(4.0,)), rows, 32)


# --- what a sweep costs ------------------------------------------------------------------------------------------

def test_the_flop_count_of_a_run_agrees_with_xla_s_count_of_the_compiled_step():
    from prosv_jax.interventions.kinds import SteeringVector
    from prosv_jax.interventions.transform import Steering
    from prosv_jax.scaling import cost
    from prosv_jax.training.data import TrainDataset
    from prosv_jax.training.timing import group_step_fn

    spec = SweepSpec(widths=(256,), arms=(Arm("x"),), task=TaskSpec(n_train=8), batch_size=8)
    f, t = spec.family, spec.task
    model = random_llama(256, depth=f.depth, head_dim=f.head_dim, vocab=f.vocab, ffn_mult=f.ffn_mult)
    rng = np.random.default_rng(0)
    examples = [(rng.integers(0, f.vocab, t.prompt_len).tolist(), rng.integers(0, f.vocab, t.response_len).tolist())
                for _ in range(8)]
    dataset = TrainDataset.from_examples(examples, max_response=t.response_len)
    step, _ = group_step_fn(model, Steering.single(f.layer, SteeringVector(), t.positions), dataset, [np.arange(8)])
    counted = cost.run_flops(spec, 256) / cost.steps_per_run(spec, 256)
    assert 1.0 < step.xla_flops() / counted < 1.25  # XLA also counts the norms, softmaxes and the optimiser


def test_the_estimate_counts_every_arm_s_runs_and_the_scaled_data():
    from prosv_jax.scaling import cost

    arms = (Arm("v", direction_lrs=(0.01, 0.1, 1.0), seeds=(0, 1)),
            Arm("v_fine", refine="v", refine_multipliers=(0.5, 1.0, 2.0), seeds=(0, 1, 2)))
    spec = SweepSpec(widths=(64, 256), arms=arms, task=TaskSpec(n_train=96), batch_size=8, data_exponent=1.0,
                     epochs=2)
    out = cost.estimate(spec, measure=False, flops_per_s=1e12, log=lambda m: None)
    small, large = out["widths"]
    assert small["runs"] == large["runs"] == 6 + 9
    assert (small["batch"], large["batch"]) == (8, 32) and small["steps_per_run"] == large["steps_per_run"] == 24
    # Per run: 4x the batch and about 16x the FLOPs per token (d^2 terms) -> about 64x.
    assert 45 < large["train_tflop"] / small["train_tflop"] < 70
    assert out["seconds"] == pytest.approx(out["tflop"] * 1e12 / 1e12)
    with pytest.raises(ValueError, match="flops_per_s"):
        cost.estimate(spec, measure=False)
    tiny = dataclasses.replace(tiny_spec(), data_exponent=1.0, data_ref_width=32)
    measured = cost.estimate(tiny, log=lambda m: None)["widths"][0]  # times real steps at width 32
    assert measured["step_s_per_run"] > 0 and measured["seconds"] >= 4 * measured["step_s_per_run"]


def test_the_wide_sweep_centres_its_grids_on_the_prediction_and_its_launcher_estimates_it(capsys):
    import importlib.util

    from prosv_jax.scaling import specs

    wide = specs.wide_spec()
    assert wide.widths == (64, 128, 256, 512, 1024, 2048) and wide.widths[-1] / wide.widths[0] == 32
    by_name = {a.name: a for a in wide.arms}
    # The coarse eta_v grid spans x/8..x8 around 0.02 (n/256)^-1/2; at n = 1024 its centre is 0.01.
    v_1024 = sorted(row["direction_lr"] for _, row in sweep_lib.arm_runs(by_name["v_lr"], 1024, wide.lr_ref_width))
    np.testing.assert_allclose(v_1024[3], 0.01, rtol=1e-9)
    np.testing.assert_allclose(v_1024[-1] / v_1024[0], 64, rtol=1e-9)
    assert len(by_name["v_fine"].seeds) == 3 and by_name["v_fine"].refine_multipliers[0] == pytest.approx(0.5)
    assert by_name["sgd_noclip"].clip_norm is None and by_name["adam_tied"].tied_lrs
    carried = by_name["alpha_transfer_fixed"]
    assert (carried.refine, carried.refine_axis, carried.transfer_from, carried.transfer_exponent) == (
        "alpha_fine", "factor", 64, 0.0) and carried.widths == (128, 256, 512, 1024, 2048)
    assert by_name["v_transfer_scaled"].transfer_exponent == -0.5
    part = {a.name: a for a in wide.restricted((1024, 2048)).arms}  # a run of some widths: the same arms' grids
    assert part["fixed_alpha"].widths == (1024,) and part["v_transfer_fixed"].widths == (1024, 2048)
    assert part["v_transfer_fixed"].transfer_from == 64 and "alpha_plateau" in part
    assert [a.name for a in wide.restricted((128,)).arms if a.widths] == [a.name for a in wide.arms if "transfer" in
                                                                          a.name]
    with pytest.raises(ValueError, match="not the sweep's"):
        wide.restricted((4096,))
    check = specs.data_check_spec()
    assert check.widths == (1024,) and check.batch_at(1024) == 128 and [a.name for a in check.arms] == ["v_lr",
                                                                                                       "v_fine"]
    steps = specs.steps_check_spec()  # the same data as wide at each width, twice the steps
    assert steps.widths == (64, 128, 256, 512, 1024) and steps.epochs == 2 * wide.epochs
    assert steps.batch_at(1024) == wide.batch_at(1024) and steps.n_train_at(1024) == wide.n_train_at(1024)
    assert len(by_name["fixed_alpha"].factor_search) == 14 and by_name["fixed_alpha"].widths == (64, 256, 1024)
    assert wide.batch_at(64) == 8 and wide.batch_at(2048) == round(8 * 32 ** 0.75)
    assert specs.gpu_spec().widths[-1] == 8192 and all(not a.widths or 8192 in a.widths for a in specs.gpu_spec().arms)

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "scaling", "run_sweep.py")
    module_spec = importlib.util.spec_from_file_location("run_sweep", path)
    launcher = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(launcher)
    assert launcher.main(["--spec", "gpu", "--estimate", "--flops-per-s", "1e14"]) == 0
    printed = capsys.readouterr().out
    assert "width 8192:" in printed and "total:" in printed
    with pytest.raises(SystemExit):
        launcher.main(["--spec", "cpu4", "--data-exponent", "1", "--estimate", "--flops-per-s", "1e12"])
