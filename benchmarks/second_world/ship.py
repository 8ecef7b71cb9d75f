"""Copy a trained shapes-fine pipeline and its sharpener into the package as ``mini-fine`` (issue 29).

    python benchmarks/second_world/ship.py --pipeline PIPELINE --sharpener SHARPENER_RUN

The pipeline must be the shapes-fine world's (its ``dicecfg_world.json``); its weights are stored in fp16 as
``assemble`` wrote them. The sharpener's ``config.json`` (with the settings `dice tune` recorded) is copied and its
weights stored in fp16. Every other file of the two folders is left behind. Refused (exit 2, nothing written) when a
weight file passes 16 MiB or all the package's weights together pass 40 MiB (`minimodel.model`'s limits: DESIGN.md's
budget, raised by issue 29 for the second model). The model cards (README.md) are written by hand after
this, from the run's logs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dicecfg.assets import ASSETS, MODELS, SHARPENERS
from dicecfg.minimodel.model import PACKAGE_WEIGHT_LIMIT as TOTAL_LIMIT
from dicecfg.minimodel.model import WEIGHT_FILE_LIMIT as FILE_LIMIT

MODEL_FILES = ("model_index.json", "dicecfg_world.json", "README.md")


def weight_bytes(root: Path, skip: tuple[Path, ...] = ()) -> int:
    return sum(
        p.stat().st_size
        for p in root.rglob("*.safetensors")
        if not any(s == p or s in p.parents for s in skip)
    )


def stage(pipeline: Path, sharpener: Path, out: Path) -> None:
    """Write the model and sharpener folders under ``out`` (mini-fine-model, mini-fine-sharpener)."""
    world = json.loads((pipeline / "dicecfg_world.json").read_text())["world"]
    if world != "shapes-fine":
        raise ValueError(f"{pipeline} is a model of the {world} world, not shapes-fine.")
    model = out / MODELS["mini-fine"].name
    for sub in ("scheduler", "text_encoder", "tokenizer", "unet", "vae"):
        shutil.copytree(pipeline / sub, model / sub)
    for name in MODEL_FILES:
        if (pipeline / name).is_file():
            shutil.copy2(pipeline / name, model / name)
    for p in model.rglob("*.safetensors"):
        dtypes = {t.dtype for t in load_file(p).values()}
        if dtypes != {torch.float16}:
            raise ValueError(f"{p} holds {sorted(map(str, dtypes))}, not fp16: assemble it again.")
    sharp = out / SHARPENERS["mini-fine"].name
    sharp.mkdir(parents=True)
    shutil.copy2(sharpener / "config.json", sharp / "config.json")
    weights = {
        k: v.to(torch.float16).contiguous() for k, v in load_file(sharpener / "model.safetensors").items()
    }
    save_file(weights, sharp / "model.safetensors")
    (sharp / "model.safetensors").chmod(0o644)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", type=Path, required=True, help="a trained shapes-fine pipeline folder")
    ap.add_argument(
        "--sharpener", type=Path, required=True, help="its sharpener (a dice train output folder)"
    )
    ap.add_argument("--assets", type=Path, default=ASSETS, help="the package's assets folder")
    args = ap.parse_args(argv)
    for need in (args.pipeline / "model_index.json", args.sharpener / "model.safetensors"):
        if not need.is_file():
            print(f"error: {need} does not exist; give a pipeline folder and a finished sharpener run.")
            return 2
    with tempfile.TemporaryDirectory(dir=args.assets) as tmp:
        try:
            stage(args.pipeline, args.sharpener, Path(tmp))
        except ValueError as e:
            print(f"error: {e} Nothing was written.")
            return 2
        new = [Path(tmp) / MODELS["mini-fine"].name, Path(tmp) / SHARPENERS["mini-fine"].name]
        big = [p for d in new for p in d.rglob("*.safetensors") if p.stat().st_size > FILE_LIMIT]
        others = weight_bytes(
            args.assets, skip=(Path(tmp), args.assets / new[0].name, args.assets / new[1].name)
        )
        total = others + sum(weight_bytes(d) for d in new)
        if big or total > TOTAL_LIMIT:
            print(
                f"error: over the budget: {total:,} bytes of weights (limit {TOTAL_LIMIT:,}); "
                f"files over {FILE_LIMIT:,} bytes: {[str(p) for p in big] or 'none'}. Nothing was written."
            )
            return 2
        for d in new:  # the folder it replaces moves aside (into tmp, removed on exit), then the new one in
            dest = args.assets / d.name
            if dest.exists():
                dest.rename(Path(tmp) / f"old-{d.name}")
            d.rename(dest)
    print(
        f"shipped {args.pipeline} and {args.sharpener}: the package holds {total:,} bytes of weights "
        f"({total / 2**20:.2f} MiB of {TOTAL_LIMIT / 2**20:.0f}); write both model cards (README.md) now."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
