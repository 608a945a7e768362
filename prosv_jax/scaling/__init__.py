"""Scaling studies of steering-vector training (method.md section 2): a planted-SV task on any model
(`planted`), width sweeps through the many-runs Trainer (`sweep`), and their analysis: heatmaps, optimal learning
rates and their width exponents with intervals, stability edges, baselines (`analysis`).

    from prosv_jax.scaling import planted, sweep, analysis
"""
