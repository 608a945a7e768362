"""A judge without a judge LLM: AxBench's three ratings from an evaluator model's probes and likelihoods.

For an answer a to instruction i, steered toward concept c, under an evaluator model E (not the steered one: the
evaluator of the `axbench detectors` folder it is given):

- concept: P(c | a) from c's detector (a logistic probe on E's pooled residuals, `concept_detector`);
- instruction relevance: pointwise mutual information per answer token,
  [log p_E(a | i) - log p_E(a | i')] / |a|, with i' an unrelated AlpacaEval instruction (fixed per i);
- fluency: negative log-likelihood per answer token, -log p_E(a | document start) / |a|.

Mapping onto AxBench's 0-2 scale (so the harmonic mean and factor selection run unchanged), anchored on E itself
with GPT-4's AlpacaEval answers (`ANCHOR_ANSWERS` of them, spread over the 805), computed once per judge:

- concept: 2 P(c | a);
- instruction: 2 clip(PMI / PMI_ref, 0, 1): 0 when the answer is no likelier after its own instruction than after
  another, 2 at the median PMI of GPT-4's answers to their instructions;
- fluency: 2 clip((NLL_bad - NLL) / (NLL_bad - NLL_ref), 0, 1): 2 at the median NLL of GPT-4's answers, 0 at the
  median NLL of the same answers with their words shuffled.

The anchors cost four full evaluator batches, so they are computed once per evaluator and dtype and kept in the
detectors folder (`ANCHORS_FILE`), keyed by everything they depend on; a judge built later reads them back.

Each rating's `reply` is a JSON object with the raw metric, so the raw numbers travel with the ratings.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import zlib
from typing import Sequence

import numpy as np

from .judges import FACTORS, JudgeStats, Rating, RatingRequest

ANCHOR_ANSWERS = 32
MAX_ANSWER_TOKENS = 128
ANCHORS_FILE = "probe_anchors_{dtype}.json"


def _median(values: np.ndarray) -> float:
    return float(np.median(values))


class ProbeJudge:
    """Rates with the detectors of an `axbench detectors` folder and their evaluator model (see the module doc)."""

    def __init__(self, detectors_dir: str, *, batch_size: int = 16, dtype: str = "float32"):
        from prosv_jax.concepts import alpaca_gpt4_pairs

        from .concept_detector import Evaluator
        from .sacrifice import reference_pairs

        self.detectors_dir = os.path.abspath(detectors_dir)
        self.evaluator = Evaluator.load(detectors_dir, dtype)
        self.detectors, self.source = self.evaluator.detectors, self.evaluator.source
        self.model, self.tokenizer = self.evaluator.model, self.evaluator.tokenizer
        self.concept_ids = {d.concept: cid for cid, d in self.detectors.items()}
        self.batch_size = batch_size
        self.stats = JudgeStats()
        self._pool = [row["instruction"] for row in alpaca_gpt4_pairs()]
        self.anchors = self._cached_anchors(dtype, *zip(*reference_pairs(ANCHOR_ANSWERS)))
        if not (self.anchors["pmi_ref"] > 0 and self.anchors["nll_bad"] > self.anchors["nll_ref"]):
            raise ValueError(f"the evaluator {self.source['model']} cannot anchor the ratings ({self.anchors}): GPT-4's "
                             "answers should be likelier after their own instructions and likelier than shuffled "
                             "words; use a trained evaluator model")

    def _cached_anchors(self, dtype: str, instructions: Sequence[str], answers: Sequence[str]) -> dict:
        """The anchors (see the module doc), read from the detectors folder when computed there before with the
        same evaluator, dtype and anchor texts, else computed and saved there (unsaved if the folder is read-only)."""
        from prosv_jax.files import write_json

        texts = json.dumps([instructions, answers, MAX_ANSWER_TOKENS], ensure_ascii=False).encode("utf-8")
        key = {"evaluator": self.source, "dtype": dtype,
               "anchor_texts_sha256": hashlib.sha256(texts).hexdigest()}
        path = os.path.join(self.detectors_dir, ANCHORS_FILE.format(dtype=dtype))
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved["key"] == key:
                return {k: float(v) for k, v in saved["anchors"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache, or an unreadable one: compute afresh
        shuffled = [" ".join(random.Random(k).sample(a.split(), len(a.split()))) for k, a in enumerate(answers)]
        anchors = {"pmi_ref": _median(self.pmi(instructions, answers)),
                   "nll_ref": _median(self.nll(answers)), "nll_bad": _median(self.nll(shuffled))}
        try:
            write_json(path, {"key": key, "anchors": anchors})
        except OSError:
            pass  # a read-only detectors folder: the next judge computes them again
        return anchors

    def config(self) -> dict:
        return {"kind": "probe", "detectors": self.detectors_dir, "evaluator": self.source["model"],
                "layer": self.source["layer"], "anchors": {k: round(v, 6) for k, v in self.anchors.items()}}

    # --- raw metrics ------------------------------------------------------------------------------------------------

    def _prompt(self, instruction: str) -> list[int]:
        return self.tokenizer(f"{instruction}\n\n")["input_ids"]

    def _answer(self, answer: str) -> list[int]:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"][:MAX_ANSWER_TOKENS]
        if not ids:
            raise ValueError("an empty answer cannot be rated; every answer needs at least one token")
        return ids

    def _per_token(self, examples) -> np.ndarray:
        from .likelihood import answer_logprobs

        sums, counts = answer_logprobs(self.model, examples, batch_size=self.batch_size, max_answer=MAX_ANSWER_TOKENS)
        return sums / counts

    def unrelated_instruction(self, instruction: str) -> str:
        """A fixed AlpacaEval instruction other than `instruction` (chosen by a hash of it)."""
        k = zlib.crc32(instruction.encode("utf-8")) % len(self._pool)
        return self._pool[k] if self._pool[k] != instruction else self._pool[(k + 1) % len(self._pool)]

    def pmi(self, instructions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Per-token PMI [N] of each answer with its instruction against an unrelated one."""
        own = self._per_token([(self._prompt(i), self._answer(a)) for i, a in zip(instructions, answers)])
        other = self._per_token([(self._prompt(self.unrelated_instruction(i)), self._answer(a))
                                 for i, a in zip(instructions, answers)])
        return own - other

    def nll(self, answers: Sequence[str]) -> np.ndarray:
        """Per-token NLL [N] of each answer after a document start (BOS, else EOS)."""
        start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        return -self._per_token([([start], self._answer(a)) for a in answers])

    def concept_probability(self, concepts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """P(concept | answer) [N] from each concept's detector."""
        missing = sorted({c for c in concepts if c not in self.concept_ids})
        if missing:
            raise ValueError(f"no detector for concept {missing[0]!r} in {self.detectors_dir}: make one with "
                             "`prosv-jax axbench detectors` on the split these answers were steered from")
        out = np.zeros(len(answers))
        for concept in set(concepts):
            rows = [k for k, c in enumerate(concepts) if c == concept]
            out[rows] = self.evaluator.concept_probability(self.concept_ids[concept], [answers[k] for k in rows],
                                                           self.batch_size, MAX_ANSWER_TOKENS)
        return out

    # --- the Judge protocol -----------------------------------------------------------------------------------------

    def ratings(self, metric: str, raw: np.ndarray) -> np.ndarray:
        """The 0-2 ratings of raw `metric` values ("p_concept", "pmi_per_token" or "nll_per_token")."""
        a = self.anchors
        if metric == "p_concept":
            return 2.0 * raw
        if metric == "pmi_per_token":
            return 2.0 * np.clip(raw / a["pmi_ref"], 0.0, 1.0)
        return 2.0 * np.clip((a["nll_bad"] - raw) / (a["nll_bad"] - a["nll_ref"]), 0.0, 1.0)

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]:
        metric_of = {"concept": "p_concept", "instruction": "pmi_per_token", "fluency": "nll_per_token"}
        out: list[Rating | None] = [None] * len(requests)
        for factor in FACTORS:
            rows = [k for k, r in enumerate(requests) if r.factor == factor]
            if not rows:
                continue
            picked = [requests[k] for k in rows]
            answers = [r.answer if r.answer.strip() else "." for r in picked]  # an empty answer rates as one token
            if factor == "concept":
                raw = self.concept_probability([r.concept for r in picked], answers)
            elif factor == "instruction":
                raw = self.pmi([r.instruction for r in picked], answers)
            else:
                raw = self.nll(answers)
            for k, x, y in zip(rows, raw, self.ratings(metric_of[factor], raw)):
                out[k] = Rating(factor, float(y), True, json.dumps({metric_of[factor]: round(float(x), 6)}))
        self.stats.rated += len(requests)
        return out
