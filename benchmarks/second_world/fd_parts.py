"""Where a method's oracle Frechet distance comes from: the FD of each group of the oracle's features.

The shapes world's oracle has 116 features (``Oracle.features``) in four groups: per palette colour its area,
centroid and second moments (42), the background (3), a 4x4x4 colour histogram (64) and the counts of detected
shapes and sizes (7). The shapes-fine oracle adds 11 (127 in all): the counts of patterns (4) and the dot count
one-hot with the share of dot-coloured pixels (7), shown as two more groups. For each row this prints the FD of the whole feature vector (as realism.py reports it) and of each group
alone (the Gaussians of that group's features), against clean renders of the same scenes, and splits each into
its mean term ``|mu_a - mu_b|^2`` and its covariance term. A group's FD is not a share of the whole (the groups'
cross-covariances are left out): it says which kind of feature a method moves away from the renders.

    python benchmarks/second_world/fd_parts.py --world shapes-fine --model mini-fine --n 256 --device cpu \
        --sharpener mini-fine --json fd_parts.json

Rows: unguided, full CFG at w, CFG on the first 2 and 5 steps, DICE at the sharpener's recorded settings and at
alpha 1 on every step. Images through ``dicecfg.generate`` (realism.py's ``sample``), so they equal realism.py's
rows for the same prompts, seeds and device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

from dicecfg import Sharpener, load_pipeline
from dicecfg.pipeline import resolve_device
from dicecfg.runs.io import atomic_write_json
from dicecfg.sampling.methods import CFG, Dice, Unguided
from dicecfg.world.fine.oracle import N_FEATURES
from dicecfg.world.fine.scenes import PATTERNS
from dicecfg.world.oracle import frechet_distance
from dicecfg.world.scenes import BACKGROUNDS, COLOURS, SHAPES
from dicecfg.world.worlds import get_world


def _slices(sizes: dict[str, int]) -> dict[str, slice]:
    ends = np.cumsum(list(sizes.values()))
    return {k: slice(int(e - n), int(e)) for (k, n), e in zip(sizes.items(), ends, strict=True)}


# group -> its features, in the order Oracle.features (world/oracle.py) and FineOracle.features write them
SIZES = {"colour moments": 6 * len(COLOURS), "background": len(BACKGROUNDS), "histogram": 4**3}
SIZES["counts"] = len(SHAPES) + 2  # shapes, then small and large
GROUPS = _slices(SIZES)
FINE_GROUPS = _slices(  # then the dots: their count one-hot (0-4 and more) and the share of dot pixels
    {**SIZES, "patterns": len(PATTERNS), "dots": N_FEATURES - sum(SIZES.values()) - len(PATTERNS)}
)


def groups(width: int) -> dict[str, slice]:
    """The groups of a feature vector of this width (either world's oracle)."""
    for g in (GROUPS, FINE_GROUPS):
        if max(sl.stop for sl in g.values()) == width:
            return g
    raise ValueError(f"{width} oracle features: neither world's layout (fd_parts.py's GROUPS)")


def _realism():
    spec = importlib.util.spec_from_file_location("realism", Path(__file__).with_name("realism.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parts(feats: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, float]]:
    """FD of the whole vector and of each group, each with its mean term (the rest is the covariance term)."""
    out = {}
    for name, sl in {"all": slice(None), **groups(feats.shape[1])}.items():
        a, b = feats[:, sl], ref[:, sl]
        mean = float(((a.mean(0) - b.mean(0)) ** 2).sum())
        out[name] = {"fd": frechet_distance(a, b), "mean": mean}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", default="shapes-fine")
    p.add_argument("--model", default="mini-fine")
    p.add_argument("--sharpener", default="mini-fine")
    p.add_argument("--n", type=int, default=256, help="held-out prompts (x 2 seed sets)")
    p.add_argument("--w", type=float, default=5.0, help="the model's w*")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", required=True)
    a = p.parse_args()
    realism = _realism()
    world = get_world(a.world)
    pipe = load_pipeline(a.model, device=resolve_device(a.device), dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    items = world.heldout_set(a.n)
    oracle = world.oracle()
    ref = oracle.features(world.render([it.scene for it in items] * len(realism.SEED_SETS)))
    sharp = Sharpener.from_pretrained(a.sharpener)
    steps = realism.STEPS
    rows = {
        "unguided": Unguided(),
        f"cfg w={a.w:g}": CFG(guidance_scale=a.w),
        "first 2 steps": CFG(guidance_scale=a.w, stop=2 / steps),
        "first 5 steps": CFG(guidance_scale=a.w, stop=5 / steps),
        f"dice {a.sharpener} (recorded settings)": Dice(sharp),
        f"dice {a.sharpener} (alpha 1 every step)": Dice(sharp, alpha=1.0, start=0.0, stop=1.0),
    }
    key = {"world": a.world, "model": a.model, "n_prompts": a.n}
    old = json.loads(Path(a.json).read_text()) if Path(a.json).is_file() else {**key, "rows": {}}
    if {k: old.get(k) for k in key} != key:
        p.error(
            f"{a.json} holds rows of other settings ({ {k: old.get(k) for k in key} }); give another --json"
        )
    done = old["rows"]
    for name, method in rows.items():
        if name not in done:
            images, nfe = realism.sample(pipe, items, method, a.batch)
            done[name] = {"nfe": nfe, **parts(oracle.features(images), ref)}
            atomic_write_json(a.json, {**key, "rows": done})
        r = done[name]
        cells = "  ".join(f"{g} {v['fd']:.3f} (mean {v['mean']:.3f})" for g, v in r.items() if g != "nfe")
        print(f"{name:<26} nfe {r['nfe']:4.1f}  {cells}", flush=True)


if __name__ == "__main__":
    main()
