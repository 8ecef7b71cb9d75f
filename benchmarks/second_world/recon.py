"""The oracle's ceiling on a VAE: each world's clean renders against their own VAE reconstructions.

A model can only be as right as its VAE lets it: an attribute the VAE cannot reproduce (a 2 px stripe, a dot of
radius 1.6 px) is lost before the UNet sees it. This renders a world's held-out scenes (and fresh validation
scenes), passes them through the VAE (posterior mean, no sampling) and scores both with the world's oracle, per
key, with the PSNR of the reconstructions.

    python benchmarks/second_world/recon.py --vae RUN/vae/final --world shapes-fine [--n 512] [--device cpu]

``--vae RUN/vae`` (a training stage's folder with ``ckpt.safetensors`` and no ``final``) scores the weights as
trained so far, for a look at a VAE while it trains.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dicecfg.pipeline import resolve_device
from dicecfg.runs.io import atomic_write_json
from dicecfg.world.worlds import get_world


def reconstruct(vae, images: np.ndarray, device: torch.device, batch: int = 128) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the VAE's reconstruction from the posterior mean, uint8 (N, H, W, 3)."""
    out = []
    with torch.no_grad():
        for b in torch.from_numpy(images).split(batch):
            x = b.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample
            out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)).clip(1e-10)
    return float((10 * np.log10(255.0**2 / mse)).mean())


def load_vae(path: str):
    """An AutoencoderKL folder, or a mini-model VAE stage's checkpoint (``minimodel.loop``) as trained so far."""
    from pathlib import Path

    from diffusers import AutoencoderKL

    if (Path(path) / "config.json").is_file():
        return AutoencoderKL.from_pretrained(path)
    from dicecfg.minimodel import model as mm
    from dicecfg.minimodel.loop import CKPT, final_weights
    from dicecfg.runs.folder import read_checkpoint

    vae = mm.make_vae(mm.config_from_dict(read_checkpoint(path, CKPT)[1]["model"]))
    vae.load_state_dict(final_weights(path, "vae", prefer_ema=False))
    return vae


def main(argv: list[str] | None = None) -> list[dict]:

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", required=True, help="an AutoencoderKL folder (a run's vae/final, a pipeline's vae)")
    p.add_argument("--world", default="shapes-fine")
    p.add_argument("--n", type=int, default=512, help="held-out scenes (and as many validation scenes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(resolve_device(args.device))
    world = get_world(args.world)
    vae = load_vae(args.vae).float().to(device).eval()
    oracle = world.oracle()
    rows = []
    for split, items in (("heldout", world.heldout_set(args.n)), ("validation", world.validation_set(args.n))):
        clean = world.render([it.scene for it in items])
        t = time.monotonic()
        rec = reconstruct(vae, clean, device)
        specs = [it.spec for it in items]
        for name, images in (("clean", clean), ("reconstructed", rec)):
            scores = oracle.score(images, specs)
            rows.append({"split": split, "images": name, **{k: float(np.mean(v)) for k, v in scores.items()}})
        rows[-1]["psnr"] = psnr(rec, clean)
        rows[-1]["seconds"] = time.monotonic() - t
    keys = list(oracle.keys)
    print(f"| split | images | {' | '.join(keys)} | PSNR dB |")
    print("|---|---|" + "---|" * (len(keys) + 1))
    for r in rows:
        cells = " | ".join(f"{r[k]:.4f}" for k in keys)
        print(f"| {r['split']} | {r['images']} | {cells} | {r['psnr']:.2f} |" if "psnr" in r else
              f"| {r['split']} | {r['images']} | {cells} | |")  # fmt: skip
    if args.json:
        atomic_write_json(args.json, {"vae": args.vae, "world": args.world, "n": args.n, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
