"""Shared defaults of every training config; a config file states only what differs from these.

Fields:
  model.path        local HF model folder, or "builtin" (the offline tiny model); "" = must be set by the user
  model.name        a label for messages and the results
  model.dtype       float32 | bfloat16 (the frozen weights)
  model.scan_min_blocks  stretches of at least this many plain blocks run as one lax.scan (compile time nearly
                    flat in the depth; 0 = never; prosv_jax.models.decoder.SCAN_MIN_BLOCKS)
  steering.*        layer (block L), positions (all | all_prompt | f{N} | l{N} | f{N}+l{M}),
                    kind (steering_vector | loreft), beta, c, lam, init (uniform | normal), unit_norm,
                    train_factor, rank (LoReFT)
  data.*            split_dir (AxBench prod_<model>_<layer>_v1 folder or its generate/, or "bundled:concept10":
                    the concept10 split shipped with prosv-jax; "" = must be set by the user), concept_ids ([] = every
                    concept of the split), max_examples (train on each concept's first N positives; 0 = all),
                    max_response (Lang's response cut in tokens; 0 = whole responses, as
                    the reference trains), simpo_max_response (SimPO's cut: 128, as the reference), negatives
                    (SimPO's JSONL, "" = none), chat
  objective         lang | simpo
  vocab_chunk       vocabulary chunk of the loss (never materialise full logits)
  optim.*           every OptimConfig field (learning rates, Adam, clipping, schedule, accumulation, width scaling);
                    decay_over: micro_steps (the reference's horizon: under grad_accum the rate ends at about
                    1 - 1/grad_accum of the peak) | updates (decays to 0)
  train.*           epochs, batch_size, prefix_cache (device | host | off), runs_per_program, runs_per_chunk
                    (runs vmapped at once inside a program; 0 = auto: 1 on one CPU, all elsewhere), param_dtype,
                    checkpoint_every (micro-steps; -1 = once per epoch; 0 = per group), blowup_loss, progress,
                    pack_length (0 = one example per row; N = each step's examples packed into rows of N tokens)
  grid.*            seeds, factor_lrs, direction_lrs, betas, cs (uniform init), lams (normal init): lists; an empty
                    one = the single value above;
                    runs = their cartesian product x data.concept_ids
  mesh.*            data, fsdp, tensor: the device mesh of each process (sizes multiply to the devices it uses; all 1
                    = one device, no mesh). The frozen weights are split over fsdp (hidden axis) and tensor (heads,
                    MLP width, vocabulary); the runs of a group over data (replicated when runs_per_program does
                    not divide it); each run's batch over fsdp (data x fsdp when the runs are replicated). E.g.
                    8 GPUs: data=2, fsdp=2, tensor=2 (fsdp/tensor for a model too big for one device). Several
                    processes (hosts) each train their share of the groups on their own mesh (see
                    `prosv-jax train --help`). Resuming on another mesh is allowed
  out_dir           where results go ("" = outputs/<config file name>); `--out DIR` overrides it
"""

import ml_collections

# AxBench's concept10 prod_2b_l10_v1 training split, shipped with prosv-jax (prosv_jax/data/bundled.py).
BUNDLED_SPLIT = "bundled:concept10"


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(path="", name="", dtype="bfloat16", scan_min_blocks=12))
    c.steering = ml_collections.ConfigDict(dict(
        layer=10, positions="f2+l2", kind="steering_vector", beta=2.0, c=1.0, lam=1.0, init="uniform",
        unit_norm=False, train_factor=True, rank=4))
    c.data = ml_collections.ConfigDict(dict(
        split_dir="", concept_ids=[], max_examples=0, max_response=0, simpo_max_response=128, negatives="", chat=True))
    c.objective = "lang"
    c.vocab_chunk = 8192
    c.optim = ml_collections.ConfigDict(dict(
        factor_lr=1.0, direction_lr=4e-2, other_lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0,
        clip_groups=["direction"], schedule="linear", warmup_steps=0, grad_accum=1, decay_over="micro_steps",
        width_scaling=False,
        factor_lr_exponent=0.5, direction_lr_exponent=-0.5))
    c.train = ml_collections.ConfigDict(dict(
        epochs=12, batch_size=12, prefix_cache="device", runs_per_program=4, runs_per_chunk=0, param_dtype="bfloat16",
        checkpoint_every=-1, blowup_loss=1e4, progress=True, pack_length=0))
    c.grid = ml_collections.ConfigDict(dict(seeds=[42], factor_lrs=[], direction_lrs=[], betas=[], cs=[], lams=[]))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    c.out_dir = ""
    return c


def paper_config(*, name: str, layer: int, objective: str, positions: str, beta: float, factor_lr: float,
                 c: float, direction_lr: float, epochs: int, batch_size: int, grad_accum: int = 1,
                 split_dir: str = "") -> ml_collections.ConfigDict:
    """One row of method.md's table of released hyperparameters; the model path is for the user to set.

    The rest follows the reference code, from `get_config`: Lang on whole responses, SimPO cut at 128 tokens, and
    under grad_accum the linear schedule's horizon counts micro-steps (it ends at about 1 - 1/grad_accum of the peak).
    """
    config = get_config()
    config.model.name = name
    config.steering.layer = layer
    config.steering.positions = positions
    config.steering.beta = beta
    config.steering.c = c
    config.objective = objective
    config.optim.factor_lr = factor_lr
    config.optim.direction_lr = direction_lr
    config.optim.grad_accum = grad_accum
    config.train.epochs = epochs
    config.train.batch_size = batch_size
    config.data.split_dir = split_dir
    return config


def moved_to_width(config: ml_collections.ConfigDict, width: int, from_width: int = 2304) -> ml_collections.ConfigDict:
    """A released row moved from the width it was tuned at (Gemma-2-2B's 2304) to `width` by the method's rules:
    eta_alpha x (width / from_width)^(1/2), eta_v x (width / from_width)^(-1/2); beta and c already scale with the
    width through alpha_0 = beta sqrt(n) and v_0 ~ U(+-c / sqrt(n))."""
    from prosv_jax.training.optim import width_scaled

    config.optim.factor_lr = width_scaled(config.optim.factor_lr, 0.5, width, from_width)
    config.optim.direction_lr = width_scaled(config.optim.direction_lr, -0.5, width, from_width)
    return config
