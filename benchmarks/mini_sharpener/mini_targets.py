"""The shapes-world targets of the mini model and its sharpener, on the full held-out set.

    python benchmarks/mini_sharpener/mini_targets.py [--model DIR] [--sharpener DIR] [--n 512] [--steps 20] [--alphas 1,2]
                                      [--json OUT]

Every method samples the same held-out prompts from the same per-item seeds through ``generate()``; the oracle
scores each image against the scene its prompt describes. Prints one Markdown table (method, NFE, oracle
all-correct, per attribute) and, for DICE, the gap to CFG.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dicecfg import Sharpener, load_pipeline
from dicecfg.evaluation.evaluate import sample_and_score
from dicecfg.world import Oracle, heldout_set

ATTRS = ("count", "shape", "colour", "size", "relation", "background")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--sharpener", default="mini")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance-scale", type=float, default=5.0)
    ap.add_argument("--scales", default="1.1,1.2,1.5,2.0")
    ap.add_argument("--alphas", default="1.0", help="DICE edit strengths (comma-separated); 1.0 = as trained")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    a = ap.parse_args()
    items = heldout_set(a.n)
    pipe = load_pipeline(a.model, device=a.device)
    sharp = Sharpener.from_pretrained(a.sharpener)
    oracle = Oracle()
    runs = [("unguided", {}), ("cfg", {"guidance_scale": a.guidance_scale})]
    runs += [("scaling", {"scale": float(s)}) for s in a.scales.split(",")]
    runs += [("dice", {"alpha": float(x)}) for x in a.alphas.split(",")]
    rows = []
    for method, kw in runs:
        t0 = time.perf_counter()
        _, samples, score = sample_and_score(
            pipe,
            items,
            method,
            oracle=oracle,
            sharpener=sharp,
            num_inference_steps=a.steps,
            batch_size=a.batch_size,
            progress=False,
            **kw,
        )
        rows.append(
            {
                "method": method,
                **kw,
                "nfe": samples[0].nfe,
                "all": float(score["all"].mean()),
                **{k: float(score[k].mean()) for k in ATTRS},
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        )
    card = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    meta = {"card": card, "n": a.n, "steps": a.steps, "torch": torch.__version__}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(json.dumps(meta))
    print("| method | knob | NFE | all-correct | " + " | ".join(ATTRS) + " |")
    print("|---|---|---|---|" + "---|" * len(ATTRS))
    for r in rows:
        knob = ", ".join(f"{k}={r[k]}" for k in ("guidance_scale", "scale", "alpha") if k in r)
        print(
            f"| {r['method']} | {knob} | {r['nfe']} | {r['all']:.3f} | "
            + " | ".join(f"{r[k]:.3f}" for k in ATTRS)
            + " |"
        )
    by = {r["method"]: r for r in rows if r.get("alpha", 1.0) == 1.0}
    print(
        f"cfg - unguided = {by['cfg']['all'] - by['unguided']['all']:+.3f}; "
        f"dice - cfg = {by['dice']['all'] - by['cfg']['all']:+.3f}; "
        f"best scaling = {max(r['all'] for r in rows if r['method'] == 'scaling'):.3f}"
    )


if __name__ == "__main__":
    main()
