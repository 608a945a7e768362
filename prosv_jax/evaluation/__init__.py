"""AxBench-style steering evaluation: instruction sampling, rubric prompts, judges and scores (method.md section 4)."""

from .instructions import load_alpaca_instructions, sample_instructions
from .judges import (Judge, JudgeCache, JudgeError, JudgeStats, LocalJudge, OpenAIJudge, Rating, RatingRequest,
                     answer_requests, cache_key, plain_chat_format, rate_answers)
from .rubric import (DEFAULT_RATING, DEFAULT_TEMPLATES, FACTORS, RubricTemplates, load_rubric_templates,
                     parse_rating, render_template)
from .scores import (ConceptScores, FactorSelection, answer_score, concept_score, harmonic_mean_score,
                     overall_score, score_concepts, select_factor)

__all__ = [
    "load_alpaca_instructions", "sample_instructions",
    "Judge", "JudgeCache", "JudgeError", "JudgeStats", "LocalJudge", "OpenAIJudge", "Rating", "RatingRequest",
    "answer_requests", "cache_key", "plain_chat_format", "rate_answers",
    "DEFAULT_RATING", "DEFAULT_TEMPLATES", "FACTORS", "RubricTemplates", "load_rubric_templates", "parse_rating",
    "render_template",
    "ConceptScores", "FactorSelection", "answer_score", "concept_score", "harmonic_mean_score", "overall_score",
    "score_concepts", "select_factor",
]
