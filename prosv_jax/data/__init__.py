"""Benchmark data readers (AxBench) turning local files into training examples."""

from prosv_jax.data.axbench import concept_negatives, concept_positives, lang_examples, load_metadata

__all__ = ["concept_negatives", "concept_positives", "lang_examples", "load_metadata"]
