"""Negative prompts on a world: does the negated attribute stay away?

    python benchmarks/negative_prompts/negative_prompts.py [--seeds 4] [--steps 20] [--sharpener mini [--sharpener RUN ...]]
    python benchmarks/negative_prompts/negative_prompts.py --world shapes-fine --model mini-fine --sharpener mini-fine
    python benchmarks/negative_prompts/negative_prompts.py --world shapes-fine --model mini-fine --sharpener mini-fine \
        --seeds 2 --seed-offset 0 --no-baselines --dice dice:neg_alpha=1 --dice dice:neg_alpha=2

The shapes world (the default): prompts name a shape and leave the colour open ("a circle"); the negative prompt
names one colour of that shape ("a red circle"); each of the 7 colours would be expected about 1/7 of the time
without it. The shapes-fine world: prompts name a colour and a shape and leave the pattern open ("a red circle");
the negative prompt names one pattern of it ("a red circle with vertical stripes", "a hollow red circle"); each of
the 4 patterns would be expected about 1/4 of the time. For every method the same prompts and seeds are used; the
oracle detects the objects and we report how often any detected object has the negated attribute, and how often
one has what the prompt asked for (its shape; on shapes-fine its colour and shape): a setting that keeps the negated
value away by breaking the image shows there. ``--seed-offset`` moves every seed (a fresh set of images: choose a
setting on one offset, report it on another).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.sampling.spelling import parse_method
from dicecfg.world import COLOURS, SHAPES
from dicecfg.world.worlds import get_world


def probe(world: str, seeds: int) -> tuple[list[str], list[str], list[str], list[dict], str, str]:
    """(prompts, negative prompts, the negated value of each, what each prompt asks for (detection field ->
    value), the detection field the negated value is read from, a label)."""
    prompts, negs, negated, asked = [], [], [], []
    if world == "shapes":
        for shape in SHAPES:
            for colour in COLOURS:
                prompts += [f"a {shape}"] * seeds
                negs += [f"a {colour} {shape}"] * seeds
                negated += [colour] * seeds
                asked += [{"shape": shape}] * seeds
        return prompts, negs, negated, asked, "colour", "a COLOUR SHAPE"
    from dicecfg.world.fine.captions import FILL_WORDS, STRIPE_PHRASES
    from dicecfg.world.fine.scenes import PATTERNS

    for shape in SHAPES:
        for colour in COLOURS:
            for pattern in PATTERNS:
                noun = f"{colour} {shape}"
                phrase = f"{FILL_WORDS[pattern][0]} {noun}" if pattern in FILL_WORDS else f"{noun} "
                phrase += STRIPE_PHRASES.get(pattern, "")
                prompts += [f"a {noun}"] * seeds
                negs += [f"a {phrase.strip()}"] * seeds
                negated += [pattern] * seeds
                asked += [{"colour": colour, "shape": shape}] * seeds
    return prompts, negs, negated, asked, "pattern", "a PATTERN COLOUR SHAPE"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="shapes", choices=("shapes", "shapes-fine"))
    ap.add_argument(
        "--seeds", type=int, default=None, help="images per combination (shapes 4, shapes-fine 1)"
    )
    ap.add_argument("--seed-offset", type=int, default=0, help="added to every seed (0: the recorded probe)")
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
    n_seeds = a.seeds or (4 if a.world == "shapes" else 1)
    prompts, negs, negated, asked, field, neg_label = probe(a.world, n_seeds)
    seeds = [a.seed_offset + i for i in range(len(prompts))]
    pipe, oracle = load_pipeline(a.model, device=a.device), get_world(a.world).oracle()
    runs = [("unguided", None, None), ("cfg", None, None), ("cfg", negs, None)] if a.baselines else []
    for name in names:
        sharp = Sharpener.from_pretrained(name)
        plain = set()  # the settings of images without a negative prompt already run (neg_* do not act there)
        for spec in a.dice or ["dice"]:
            kwargs = parse_method(spec)[1]
            key = tuple(sorted((k, v) for k, v in kwargs.items() if not k.startswith("neg_")))
            runs += [] if key in plain else [(spec, None, (name, sharp))]
            runs += [(spec, negs, (name, sharp))]
            plain.add(key)
    print(
        f"{a.world}: {len(prompts)} images per row ({len(set(negs))} negative prompts x {n_seeds} seeds), "
        f"{a.steps} steps, seeds {seeds[0]}-{seeds[-1]}, torch {torch.__version__}"
    )
    print(
        f"| method | sharpener | negative prompt | negated {field} present | prompt kept | any object found |"
    )
    print("|---|---|---|---|---|---|")
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
        dets = oracle.detect(imgs)[0]
        hit = np.mean([any(getattr(d, field) == v for d in ds) for ds, v in zip(dets, negated, strict=True)])
        pairs = zip(dets, asked, strict=True)
        kept = np.mean(
            [any(all(getattr(d, k) == v for k, v in want.items()) for d in ds) for ds, want in pairs]
        )
        found = np.mean([len(ds) > 0 for ds in dets])
        label = named[0] if named else "-"
        print(f"| {method} | {label} | {neg_label if neg else '-'} | {hit:.3f} | {kept:.3f} | {found:.3f} |")


if __name__ == "__main__":
    main()
