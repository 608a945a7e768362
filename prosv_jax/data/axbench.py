"""AxBench training data from any local folder: concept metadata, concept-positive pairs, tokenised examples.

A split folder is AxBench's `prod_<model>_<layer>_v1` (holding `generate/`) or its `generate/` folder itself, with

- `metadata.jsonl`: one concept per line; needs `concept_id` (int, 0..N-1) and `concept` (description);
- `train_data.parquet`: needs `input` (raw instruction), `output` (response), `category` ("positive"/"negative")
  and `concept_id` (int; -1 for shared negatives).

For concept c the training pairs are the rows with `concept_id == c` and `category == "positive"`. Beside
`generate/`, `inference/latent_eval_data.parquet` (optional; `output`, `category`, `concept_id`) holds AxBench's
held-out concept texts on other instructions: "positive", "negative" and "hard negative" rows per concept.
The split "bundled:concept10" is the concept10 split shipped with the package (`prosv_jax.data.bundled`).

Negatives for SimPO (optional; AxBench does not ship them, so they are never made up here): a JSONL file with one
object per line,

    {"concept_id": 0, "instruction": "<the same instruction as a positive row's input>",
     "output": "<a concept-free response to that instruction>"}

Every positive instruction of a trained concept needs a line with its `concept_id` and exactly that instruction;
AxBench's shared negatives (`concept_id == -1`) answer other instructions and cannot stand in.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

METADATA_FILE = "metadata.jsonl"
TRAIN_FILE = "train_data.parquet"
METADATA_COLUMNS = ("concept_id", "concept")
TRAIN_COLUMNS = ("input", "output", "category", "concept_id")
LATENT_FILE = "latent_eval_data.parquet"
LATENT_COLUMNS = ("output", "category", "concept_id")
NEGATIVE_FIELDS = ("concept_id", "instruction", "output")

Pair = tuple[str, str]  # (instruction, response)


def generate_dir(split_dir: str | os.PathLike) -> str:
    """The folder holding `metadata.jsonl` and `train_data.parquet`: `split_dir/generate` or `split_dir` (the
    bundled split's folder for "bundled:concept10")."""
    from prosv_jax.data.bundled import resolve_split

    split_dir = resolve_split(split_dir)
    for candidate in (os.path.join(split_dir, "generate"), split_dir):
        if os.path.isfile(os.path.join(candidate, TRAIN_FILE)) or os.path.isfile(os.path.join(candidate,
                                                                                              METADATA_FILE)):
            return candidate
    raise FileNotFoundError(f"{split_dir}: no AxBench split here (expected {TRAIN_FILE} and {METADATA_FILE} in it "
                            "or in its generate/ folder; 'bundled:concept10' is the concept10 split shipped with "
                            "prosv-jax)")


def _require(path: str, have: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in have]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; required: {list(required)}, found: {list(have)}")


def _load(path: str, reader: str, required: Sequence[str]):
    import datasets

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    if reader == "from_json" and not _has_content(path):
        raise ValueError(f"{path} is empty: no rows (an empty split?)")
    datasets.disable_progress_bars()
    table = getattr(datasets.Dataset, reader)(path, keep_in_memory=True)
    _require(path, table.column_names, required)
    return table


def _has_content(path: str) -> bool:
    with open(path, "rb") as f:
        return any(line.strip() for line in f)


def load_metadata(split_dir: str | os.PathLike) -> list[dict]:
    """The concepts of a split, one dict per line of `metadata.jsonl`, in file order (an empty split is an error)."""
    path = os.path.join(generate_dir(split_dir), METADATA_FILE)
    rows = list(_load(path, "from_json", METADATA_COLUMNS))
    if not rows:
        raise ValueError(f"{path} lists no concepts (an empty split)")
    return rows


def concept_ids(split_dir: str | os.PathLike) -> list[int]:
    return [int(row["concept_id"]) for row in load_metadata(split_dir)]


def concept_positives(split_dir: str | os.PathLike, concept_id: int) -> list[Pair]:
    """(instruction, output) of every positive training row of `concept_id`."""
    valid = concept_ids(split_dir)
    if int(concept_id) not in valid:
        span = f"{min(valid)}..{max(valid)}" if valid else "none"
        raise ValueError(f"unknown concept id {concept_id} in {generate_dir(split_dir)}: valid ids are {span} "
                         f"({len(valid)} concepts)")
    return _pairs(split_dir, int(concept_id), "positive")


def shared_negatives(split_dir: str | os.PathLike) -> list[Pair]:
    """(instruction, output) of the split's shared negative rows (concept_id -1: concept-free texts), e.g. for
    DiffMean's negative mean; they answer other instructions than the positives, so SimPO cannot use them."""
    return _pairs(split_dir, -1, "negative")


def _pairs(split_dir, concept_id: int, category: str) -> list[Pair]:
    path = os.path.join(generate_dir(split_dir), TRAIN_FILE)
    table = _load(path, "from_parquet", TRAIN_COLUMNS)
    cols = {c: table[c] for c in TRAIN_COLUMNS}
    pairs = [(i, o) for i, o, cat, c in zip(cols["input"], cols["output"], cols["category"], cols["concept_id"])
             if int(c) == concept_id and cat == category]
    if not pairs:
        raise ValueError(f"{path}: concept {concept_id} has no {category} rows")
    return pairs


def latent_eval_outputs(split_dir: str | os.PathLike, concept_id: int) -> tuple[list[str], list[str]]:
    """(texts with the concept, texts without it: its negatives and hard negatives) from the split's
    `inference/latent_eval_data.parquet`: held-out texts, never for training."""
    generate = generate_dir(split_dir)
    root = os.path.dirname(generate) if os.path.basename(generate) == "generate" else generate
    path = os.path.join(root, "inference", LATENT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the split has no held-out concept texts (AxBench's "
                                f"inference/{LATENT_FILE}); use a split folder of the AxBench release or "
                                "bundled:concept10")
    table = _load(path, "from_parquet", LATENT_COLUMNS)
    rows = [(o, cat) for o, cat, c in zip(table["output"], table["category"], table["concept_id"])
            if int(c) == int(concept_id)]
    with_concept = [o for o, cat in rows if cat == "positive"]
    without = [o for o, cat in rows if cat != "positive"]
    if not with_concept or not without:
        raise ValueError(f"{path}: concept {concept_id} has {len(with_concept)} positive and {len(without)} negative "
                         "held-out texts; a detector needs both")
    return with_concept, without


def concept_negatives(path: str | os.PathLike, concept_id: int, positives: Sequence[Pair]) -> list[Pair]:
    """(instruction, concept-free output) for each positive pair, from a negatives JSONL (schema above)."""
    path = os.fspath(path)
    table = _load(path, "from_json", NEGATIVE_FIELDS)
    found = {}
    for c, instruction, output in zip(table["concept_id"], table["instruction"], table["output"]):
        if int(c) == int(concept_id):
            found[instruction] = output
    missing = [i for i, _ in positives if i not in found]
    if missing:
        raise ValueError(f"{path}: no concept-free response for {len(missing)} of the {len(positives)} instructions "
                         f"of concept {concept_id} (first: {json.dumps(missing[0])[:120]}); SimPO needs one per "
                         "positive, with the same concept_id and instruction")
    return [(i, found[i]) for i, _ in positives]


def require_negatives(negatives: str | os.PathLike | None) -> str:
    """The negatives path, or a clear error when SimPO is asked for without one."""
    if not negatives:
        raise ValueError("the SimPO objective needs concept-free responses to the training instructions, which "
                         "AxBench does not ship: give a negatives JSONL (fields concept_id, instruction, output; see "
                         "prosv_jax/data/axbench.py) with --config.data.negatives=PATH, or use objective 'lang'")
    if not os.path.isfile(os.fspath(negatives)):
        raise FileNotFoundError(f"negatives file {negatives} not found")
    return os.fspath(negatives)


def lang_examples(tokenizer, pairs: Sequence[Pair], max_response: int | None = None, chat: bool = True
                  ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per pair: the prompt chat-templated with BOS and generation prompt (or plainly
    encoded with `chat=False`), the response encoded without special tokens, no EOS, cut to `max_response` tokens
    (None: whole; the reference cuts at 128 on its SimPO path only, method.md section 3)."""
    if max_response is not None and max_response < 1:
        raise ValueError(f"max_response must be a positive number of tokens or None (no cut), got {max_response}")
    from prosv_jax.inference.prompts import prompt_ids

    examples = []
    for instruction, output in pairs:
        response = tokenizer(output, add_special_tokens=False)["input_ids"][:max_response]
        examples.append((prompt_ids(tokenizer, instruction, chat), list(response)))
    return examples
