"""Negative prompts on the shapes world: does the negated colour stay away?

    python benchmarks/negative_prompts/negative_prompts.py [--seeds 4] [--steps 20] [--sharpener mini [--sharpener RUN ...]]

Prompts name a shape and leave the colour open ("a circle"); the negative prompt names one colour of that shape
("a red circle"). For every method the same prompts and seeds are used; the oracle detects the objects and we
report how often any detected object has the negated colour. Without a negative prompt, each of the 7 colours
would be expected about 1/7 of the time.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.world import COLOURS, SHAPES, Oracle


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model")
    ap.add_argument("--sharpener", action="append", help="repeatable; default: the shipped one (mini)")
    ap.add_argument("--device", help="default: cuda if available")
    ap.add_argument(
        "--baselines", action=argparse.BooleanOptionalAction, default=True, help="unguided and CFG rows too"
    )
    ap.add_argument(
        "--dice",
        action="append",
        help="repeatable: a DICE spelling for every sharpener, e.g. dice:stop=1 (default: its recorded settings)",
    )
    a = ap.parse_args()
    names = a.sharpener or ["mini"]
    prompts, negs, negated = [], [], []
    for shape in SHAPES:
        for colour in COLOURS:
            for _ in range(a.seeds):
                prompts.append(f"a {shape}")
                negs.append(f"a {colour} {shape}")
                negated.append(colour)
    seeds = list(range(len(prompts)))
    pipe, oracle = load_pipeline(a.model, device=a.device), Oracle()
    runs = [("unguided", None, None), ("cfg", None, None), ("cfg", negs, None)] if a.baselines else []
    for name in names:
        sharp = Sharpener.from_pretrained(name)
        for spec in a.dice or ["dice"]:
            runs += [(spec, None, (name, sharp)), (spec, negs, (name, sharp))]
    print(
        f"{len(prompts)} images per row ({len(SHAPES)} shapes x {len(COLOURS)} negated colours x {a.seeds} "
        f"seeds), {a.steps} steps, torch {torch.__version__}"
    )
    print("| method | sharpener | negative prompt | negated colour present | any object found |")
    print("|---|---|---|---|---|")
    for method, neg, named in runs:
        imgs = np.stack(
            [
                s.image
                for s in generate(
                    pipe,
                    prompts,
                    method=method,
                    seeds=seeds,
                    sharpener=named[1] if named else None,
                    negative_prompt=neg,
                    num_inference_steps=a.steps,
                    batch_size=28,
                    progress=False,
                )
            ]
        )
        dets, _ = oracle.detect(imgs)
        hit = np.mean([any(d.colour == c for d in ds) for ds, c in zip(dets, negated, strict=True)])
        found = np.mean([len(ds) > 0 for ds in dets])
        label = named[0] if named else "-"
        print(f"| {method} | {label} | {'a COLOUR SHAPE' if neg else '-'} | {hit:.3f} | {found:.3f} |")


if __name__ == "__main__":
    main()
