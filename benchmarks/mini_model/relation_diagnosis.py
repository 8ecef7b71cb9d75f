"""Why CFG barely helps the shipped mini model: where the spatial relation is lost.

    python benchmarks/mini_model/relation_diagnosis.py [--model mini] [--eval-dir eval-mini]

1. Text encoder: how much the 77 token states change when one word of a prompt changes (relative L2 norm of
   the difference), for a relation word (left <-> right, above <-> below) versus a colour, a shape, a size.
2. Images (optional, ``--eval-dir`` of a ``dice eval`` run over the held-out set): for every two-object
   relation prompt whose two objects are both found (by shape and colour), whether their placement matches
   the stated relation, the opposite one, or neither (off the axis). A model that ignores the relation puts
   about as many pairs in the opposite configuration as in the stated one.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import torch

from dicecfg import load_pipeline
from dicecfg.families import family_of

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PAIRS = [
    ("relation: left <-> right", "a red circle left of a blue square", "a red circle right of a blue square"),
    ("relation: above <-> below", "a red circle above a blue square", "a red circle below a blue square"),
    ("colour: blue <-> green", "a red circle left of a blue square", "a red circle left of a green square"),
    ("shape: square <-> circle", "a red circle left of a blue square", "a red circle left of a blue circle"),
    ("size: (none) <-> big", "a red circle left of a blue square", "a big red circle left of a blue square"),
]


def text_sensitivity(pipe) -> list[tuple[str, float]]:
    fam = family_of(pipe)
    out = []
    for name, a, b in PAIRS:
        c = fam.encode(pipe, [a, b]).embeds.float()
        out.append((name, ((c[0] - c[1]).norm() / c[0].norm()).item()))
    return out


def placements(eval_dir: Path) -> dict[str, collections.Counter]:
    from PIL import Image

    from dicecfg.world import Oracle
    from dicecfg.world.heldout import heldout_set
    from dicecfg.world.scenes import relation_holds

    oracle, res = Oracle(), {}
    for d in sorted(p for p in (eval_dir / "images").iterdir() if p.is_dir()):
        files = sorted(d.glob("*.png"))
        items = heldout_set(len(files))
        dets, _ = oracle.detect(np.stack([np.array(Image.open(f).convert("RGB")) for f in files]))
        c: collections.Counter = collections.Counter()
        for it, ds in zip(items, dets, strict=True):
            sp = it.spec
            if sp.relation is None or len(sp.objects) != 2:
                continue
            found = [[x for x in ds if (x.shape, x.colour) == (o.shape, o.colour)] for o in sp.objects]
            if any(len(f) != 1 for f in found):
                c["pair not found"] += 1
                continue
            a, b = found[0][0], found[1][0]
            dx, dy = a.x - b.x, a.y - b.y
            if relation_holds(sp.relation, dx, dy):
                c["stated"] += 1
            elif relation_holds(OPPOSITE[sp.relation], dx, dy):
                c["opposite"] += 1
            else:
                c["neither (off axis)"] += 1
        res[d.name] = c
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--eval-dir", help="a `dice eval` output folder over the held-out set")
    a = ap.parse_args()
    with torch.no_grad():
        sens = text_sensitivity(load_pipeline(a.model))
    print("| one word changed | relative L2 change of the 77 text-encoder token states |\n|---|---|")
    for name, v in sens:
        print(f"| {name} | {v:.4f} |")
    if a.eval_dir:
        print("\n| images | pairs found | stated relation | opposite relation | neither (off axis) |")
        print("|---|---|---|---|---|")
        for name, c in placements(Path(a.eval_dir)).items():
            n = c["stated"] + c["opposite"] + c["neither (off axis)"]
            print(
                f"| {name} | {n} | {c['stated'] / n:.3f} | {c['opposite'] / n:.3f} | "
                f"{c['neither (off axis)'] / n:.3f} |"
            )


if __name__ == "__main__":
    main()
