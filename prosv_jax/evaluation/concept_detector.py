"""A judge-free concept score: a logistic probe on an evaluator model's pooled residuals.

A text's features are the mean block-L residual of an evaluator model over its tokens after the first (the first
token is an attention sink whose residual is orders of magnitude larger than the others on these models: it would
swamp the mean). A detector is an L2-regularised logistic regression on standardised features, fitted by Newton's
method in float64 (to the optimum, no solver tolerance to tune), on a concept's AxBench training texts against
texts without it, and validated by its AUROC on AxBench's latent_eval texts, whose instructions are disjoint from
training. A detector below `MIN_AUROC` is flagged: its concept scores are not to be trusted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prosv_jax.models.decoder import positions_from_valid

from .likelihood import rows_per_batch

MIN_AUROC = 0.85  # below this a detector's concept is reported separately
OTHER_CONCEPT_NEGATIVES = 8  # training texts taken from each other concept as negatives
MIN_TRAIN_POSITIVES = 16  # fewer texts with the concept cannot fit a probe on a residual of hundreds of dimensions
MIN_HELDOUT_TEXTS = 4  # per class: fewer make the held-out AUROC meaningless


@functools.partial(jax.jit, static_argnames=("graphdef", "layer"))
def _pooled_means(graphdef, state, layer: int, tokens, valid):
    """Mean block-`layer` residual [B, d] over every real token but the first; tokens, valid: [B, T]."""
    model = nnx.merge(graphdef, state)
    hidden, _, _ = model.run_blocks(model.embed(tokens), positions_from_valid(valid), valid, stop=layer + 1)
    pool = valid.at[:, 0].set(False).astype(jnp.float32)  # [B, T]
    return jnp.einsum("bt,btd->bd", pool, hidden.astype(jnp.float32)) / pool.sum(1, keepdims=True)


def pooled_residuals(model, tokenizer, texts: Sequence[str], layer: int, *, batch_size: int = 16,
                     max_tokens: int = 256) -> np.ndarray:
    """Features [N, d] (float64): each text's mean block-`layer` residual over its tokens after the first, the
    text encoded as the tokenizer does by default (BOS where the model has one), cut to `max_tokens` tokens."""
    if not 0 <= layer < model.cfg.num_layers:
        raise ValueError(f"layer {layer} is out of range: the evaluator has blocks 0..{model.cfg.num_layers - 1}")
    if not texts:
        raise ValueError("pooled_residuals needs at least one text")
    ids = [tokenizer(t)["input_ids"][:max_tokens] for t in texts]
    short = [i for i, row in enumerate(ids) if len(row) < 2]
    if short:
        raise ValueError(f"text {short[0]} has fewer than 2 tokens: nothing to pool after the first token")
    length = -(-max(map(len, ids)) // 16) * 16  # one padded length for every batch of the call
    batch_size = rows_per_batch(len(ids), batch_size)
    graphdef, state = nnx.split(model)
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        tokens = np.zeros((batch_size, length), np.int32)
        valid = np.zeros((batch_size, length), bool)
        valid[len(chunk):, :2] = True  # filler rows (a partial last batch): two pad tokens, dropped below
        for row, seq in enumerate(chunk):
            tokens[row, :len(seq)] = seq
            valid[row, :len(seq)] = True
        means = _pooled_means(graphdef, state, layer, tokens, valid)
        out.append(np.asarray(means, np.float64)[:len(chunk)])
    return np.concatenate(out)


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1.0, iterations: int = 50
                 ) -> tuple[np.ndarray, float]:
    """(weight [d], bias) minimising the class-balanced mean log-loss + l2/2 |weight|^2 (bias not penalised), by
    Newton's method in float64. features: [N, d]; labels: [N] in {0, 1}."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be [N, d] and labels [N], got {x.shape} and {y.shape}")
    if not (y.any() and (1 - y).any()):
        raise ValueError("a detector needs positive and negative texts; one class is empty")
    n, d = x.shape
    sample = np.where(y == 1, 0.5 / y.sum(), 0.5 / (1 - y).sum())  # [N]: each class weighs 1/2
    design = np.concatenate([x, np.ones((n, 1))], 1)  # [N, d + 1]: the last column fits the bias
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    theta = np.zeros(d + 1)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        gradient = design.T @ (sample * (p - y)) + penalty * theta
        hessian = (design * (sample * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-12:
            break
    return theta[:-1], float(theta[-1])


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative (ties 1/2)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if not (labels.any() and (~labels).any()):
        raise ValueError("AUROC needs at least one positive and one negative")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # midranks over runs of tied scores
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    positives = labels.sum()
    negatives = len(labels) - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclasses.dataclass
class ConceptDetector:
    """P(concept | text) = sigmoid(weight . (features - mean) / scale + bias), with its held-out AUROC."""

    concept: str
    layer: int
    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    weight: np.ndarray  # [d]
    bias: float
    heldout_auroc: float | None = None

    @classmethod
    def fit(cls, concept: str, layer: int, positives: np.ndarray, negatives: np.ndarray, l2: float = 1.0
            ) -> "ConceptDetector":
        """Fits on features [P, d] of texts with the concept and [N, d] of texts without it."""
        x = np.concatenate([positives, negatives])  # [P + N, d]
        mean, scale = x.mean(0), x.std(0) + 1e-6
        labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        weight, bias = fit_logistic((x - mean) / scale, labels, l2)
        return cls(concept, layer, mean, scale, weight, bias)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(concept) [N] of texts with features [N, d]."""
        return 1.0 / (1.0 + np.exp(-(((features - self.mean) / self.scale) @ self.weight + self.bias)))

    def validate(self, positives: np.ndarray, negatives: np.ndarray) -> float:
        """Sets and returns the held-out AUROC on features of held-out texts with and without the concept."""
        scores = np.r_[self.probability(positives), self.probability(negatives)]
        self.heldout_auroc = auroc(scores, np.r_[np.ones(len(positives)), np.zeros(len(negatives))])
        return self.heldout_auroc

    @property
    def flagged(self) -> bool:
        """True when the held-out AUROC is missing or below MIN_AUROC."""
        return self.heldout_auroc is None or self.heldout_auroc < MIN_AUROC

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        return json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fields.items()})

    @classmethod
    def from_json(cls, text: str) -> "ConceptDetector":
        fields = json.loads(text)
        return cls(**{k: np.asarray(v, np.float64) if isinstance(v, list) else v for k, v in fields.items()})


def detector_texts(split_dir: str, concept_id: int) -> dict[str, list[str]]:
    """The texts of one concept's detector from an AxBench split: "train_positive" (its training responses),
    "train_negative" (the shared negatives and the first `OTHER_CONCEPT_NEGATIVES` responses of each other concept,
    so the detector learns the concept rather than the AxBench writer's style), "heldout_positive" and
    "heldout_negative" (its latent_eval texts, on instructions disjoint from training)."""
    from prosv_jax.data import axbench

    positives = [t for _, t in axbench.concept_positives(split_dir, concept_id)]  # checks the id first
    others = [t for c in axbench.concept_ids(split_dir) if c != concept_id
              for _, t in axbench.concept_positives(split_dir, c)[:OTHER_CONCEPT_NEGATIVES]]
    heldout_positive, heldout_negative = axbench.latent_eval_outputs(split_dir, concept_id)
    if len(positives) < MIN_TRAIN_POSITIVES:
        raise ValueError(f"concept {concept_id} has {len(positives)} training texts in {split_dir}; a detector needs "
                         f"at least {MIN_TRAIN_POSITIVES}: leave the concept out (--concepts) or use a split with more")
    if min(len(heldout_positive), len(heldout_negative)) < MIN_HELDOUT_TEXTS:
        raise ValueError(f"concept {concept_id} has {len(heldout_positive)} held-out texts with the concept and "
                         f"{len(heldout_negative)} without in {split_dir}; validating a detector needs at least "
                         f"{MIN_HELDOUT_TEXTS} of each: leave the concept out (--concepts) or use a split with more")
    return {"train_positive": positives,
            "train_negative": [t for _, t in axbench.shared_negatives(split_dir)] + others,
            "heldout_positive": heldout_positive, "heldout_negative": heldout_negative}


DETECTORS_CSV = "detectors.csv"


def run_detectors(model: str, split: str, out: str, layer: int | None = None, concepts: Sequence[int] | None = None,
                  batch_size: int = 16, max_tokens: int = 256, dtype: str = "float32",
                  log: Callable[[str], None] = print) -> list[dict]:
    """Stage `axbench detectors`: a detector per concept of `split` on evaluator `model` at block `layer` (default:
    the middle block), written to `out/c<id>.json`, with `out/detectors.csv` (concept, held-out AUROC, flagged).
    A detector already in `out` for the same evaluator, split and layer is kept (the stage resumes)."""
    import csv

    from transformers import AutoTokenizer

    from prosv_jax.data import axbench
    from prosv_jax.files import write_atomic
    from prosv_jax.models.loading import load_model
    from prosv_jax.models.sources import resolve_model_dir

    from .runs import check_concepts, concept_table

    table = concept_table(split)
    ids = sorted({int(c) for c in concepts}) if concepts else sorted(table)
    check_concepts(ids, table, split)
    model_dir = resolve_model_dir(model)
    evaluator = load_model(model_dir, jnp.dtype(dtype))
    layer = evaluator.cfg.num_layers // 2 if layer is None else layer
    if not 0 <= layer < evaluator.cfg.num_layers:
        raise ValueError(f"--layer {layer} is out of range: {model_dir} has blocks 0..{evaluator.cfg.num_layers - 1}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    os.makedirs(out, exist_ok=True)
    source = {"model": model, "split": split, "layer": layer, "max_tokens": max_tokens, "dtype": dtype}
    cached: dict[str, np.ndarray] = {}  # text -> features: shared negatives are pooled once for every concept

    def features(texts: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in cached))
        if new:
            cached.update(zip(new, pooled_residuals(evaluator, tokenizer, new, layer, batch_size=batch_size,
                                                    max_tokens=max_tokens)))
        return np.stack([cached[t] for t in texts])

    rows = []
    for cid in ids:
        path = os.path.join(out, f"c{cid}.json")
        detector = _load_matching(path, source)
        if detector is None:
            texts = detector_texts(split, cid)
            detector = ConceptDetector.fit(table[cid], layer, features(texts["train_positive"]),
                                           features(texts["train_negative"]))
            detector.validate(features(texts["heldout_positive"]), features(texts["heldout_negative"]))
            write_atomic(path, json.dumps({"source": source, "detector": json.loads(detector.to_json())}))
        rows.append({"concept_id": cid, "concept": table[cid], "layer": layer,
                     "heldout_auroc": round(detector.heldout_auroc, 4), "flagged": detector.flagged})
        log(f"concept {cid}: held-out AUROC {detector.heldout_auroc:.3f}{'  FLAGGED' if detector.flagged else ''}")
    with open(os.path.join(out, DETECTORS_CSV), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _load_matching(path: str, source: dict) -> ConceptDetector | None:
    """The detector saved at `path` if it was made from the same evaluator, split and settings, else None."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved.get("source") != source:
        raise ValueError(f"{path} holds a detector made with other settings ({saved.get('source')}, now {source}): "
                         "choose another --out, or delete it to start over")
    return ConceptDetector.from_json(json.dumps(saved["detector"]))


def load_detectors(out: str, with_source: bool = False):
    """{concept id: detector} of an `axbench detectors` folder (and, `with_source`, the settings that made them:
    evaluator model, split, layer, ...)."""
    found, sources = {}, []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        if name.startswith("c") and name.endswith(".json") and name[1:-5].isdigit():
            with open(os.path.join(out, name)) as f:
                saved = json.load(f)
            found[int(name[1:-5])] = ConceptDetector.from_json(json.dumps(saved["detector"]))
            sources.append(saved["source"])
    if not found:
        raise FileNotFoundError(f"{out}: no detectors (c<id>.json); make them with `prosv-jax axbench detectors`")
    if any(s != sources[0] for s in sources):
        raise ValueError(f"{out} mixes detectors made with different settings; remake them into one folder")
    return (found, sources[0]) if with_source else found


@dataclasses.dataclass
class Evaluator:
    """The detectors of an `axbench detectors` folder with the evaluator model that made them."""

    detectors: dict[int, ConceptDetector]
    source: dict
    model: object
    tokenizer: object

    @classmethod
    def load(cls, detectors_dir: str, dtype: str = "float32") -> "Evaluator":
        from transformers import AutoTokenizer

        from prosv_jax.models.loading import load_model
        from prosv_jax.models.sources import resolve_model_dir

        detectors, source = load_detectors(detectors_dir, with_source=True)
        model_dir = resolve_model_dir(source["model"])
        return cls(detectors, source, load_model(model_dir, jnp.dtype(dtype)), AutoTokenizer.from_pretrained(model_dir))

    def concept_probability(self, concept_id: int, texts: Sequence[str], batch_size: int = 16,
                            max_tokens: int = 128) -> np.ndarray:
        """P(concept | text) [N] from concept `concept_id`'s detector."""
        if concept_id not in self.detectors:
            raise ValueError(f"no detector for concept {concept_id} (have {sorted(self.detectors)}): make one with "
                             "`prosv-jax axbench detectors --concepts ...`")
        detector = self.detectors[concept_id]
        features = pooled_residuals(self.model, self.tokenizer, texts, detector.layer, batch_size=batch_size,
                                    max_tokens=max_tokens)
        return detector.probability(features)
