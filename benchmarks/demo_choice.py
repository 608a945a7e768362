"""How `prosv-jax demo` chose its concept and layer: a scan of concept x layer x method on SmolLM2-135M-Instruct.

Each row trains one steering vector with the demo's recipe and settings (only the named knobs changed), then answers
the demo's AlpacaEval instructions with it (sampled, seed 42, as the demo does). Columns: held-out Lang loss
unsteered and steered (the concept's last 12 examples, never trained on), the share of answers with a concept word
(the demo's judge-free proxy: words of the concept's training responses that are rare in GPT-4's answers and in the
other concepts' responses), the learned factor and direction norm, the seconds taken. The JSON record keeps every
answer, to be read: the proxy misses concepts that show as dates or numbers rather than words.

    python benchmarks/demo_choice.py --concepts 0,1,2,8 --layers 12 --epochs 12
    python benchmarks/demo_choice.py --concepts 2 --layers 6,9,12,18 --epochs 8
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from forward import append_results  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv=None) -> None:
    from prosv_jax import demo

    defaults = demo.DemoSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concepts", type=_ints, default=[0, 1, 2, 8], help="concept10 ids, comma-separated")
    p.add_argument("--layers", type=_ints, default=[defaults.layer], help="blocks, comma-separated")
    p.add_argument("--methods", default="PrOSV", help="PrOSV, FSSV or both, comma-separated")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--train-examples", type=int, default=defaults.train_examples)
    args = p.parse_args(argv)

    from prosv_jax.concepts import concept10_lexicon, concept_word_rate
    from prosv_jax.evaluation.generation import Generator
    from prosv_jax.models.sources import resolve_model_dir

    generator = Generator(resolve_model_dir(defaults.model), defaults.dtype, batch_size=defaults.instructions)
    model, tokenizer = generator.model, generator.tokenizer
    instructions = demo._instructions(defaults.instructions)
    rows, table = [], ["| concept | layer | method | held-out loss unsteered -> steered | answers with a concept word "
                       "| alpha | abs(v) | s |", "|---:|---:|---|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as root:
        for concept in args.concepts:
            settings = dataclasses.replace(defaults, concept_id=concept, epochs=args.epochs,
                                           train_examples=args.train_examples)
            train_pairs, train_set, heldout_set = demo.concept_datasets(tokenizer, settings)
            lexicon = concept10_lexicon(concept, train_pairs)
            for layer, method in ((layer, m) for layer in args.layers for m in args.methods.split(",")):
                start = time.perf_counter()
                run = demo._train_method(model, method, demo.RECIPES[method].at_width(model.cfg.hidden_size),
                                         dataclasses.replace(settings, layer=layer), train_set, heldout_set,
                                         os.path.join(root, f"c{concept}-L{layer}-{method}"), progress=False)
                answers = [a.text for a in generator(instructions, steering=run["steering"], params=run["params"],
                                                     max_new_tokens=settings.max_new_tokens,
                                                     temperature=settings.temperature, seed=settings.seed)]
                row = dict(concept=concept, layer=layer, method=method, epochs=settings.epochs,
                           train_examples=len(train_pairs), unsteered_loss=round(run["unsteered_loss"], 4),
                           heldout_loss=round(run["heldout_loss"], 4),
                           concept_word_rate=concept_word_rate(answers, lexicon), alpha=round(run["alpha"], 2),
                           v_norm=round(run["v_norm"], 3), seconds=round(time.perf_counter() - start),
                           answers=answers)
                rows.append(row)
                table.append(f"| {concept} | {layer} | {method} | {row['unsteered_loss']:.3f} -> "
                             f"{row['heldout_loss']:.3f} | {row['concept_word_rate']:.0%} | {row['alpha']:g} | "
                             f"{row['v_norm']:g} | {row['seconds']} |")
                print(table[-1], flush=True)
    print("\n".join(table))
    path = append_results("demo_choice", argv, f"PrOSV/FSSV on {defaults.model}, the demo's recipe, epochs "
                          f"{args.epochs}, {args.train_examples} training examples, {os.cpu_count()} cores.",
                          table, {"rows": rows})
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
