"""Scratch data of the mini model's training: rendered shards and cached VAE latents (never shipped)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dicecfg.runs.io import atomic_save_tensors, atomic_write, atomic_write_json, load_tensors

log = logging.getLogger(__name__)


def render_shards(
    data: Path,
    n_images: int,
    shard_size: int,
    n_eval: int,
    seed: int,
    workers: int,
    deadline: float | None = None,
    world: str = "shapes",
) -> Iterator[dict]:
    """Render missing shards (``images_KKK.npy`` + ``captions_KKK.json``, and ``*_eval``); yield one row each.

    Existing shards are kept, so an interrupted run resumes; stops between shards after ``deadline``.
    """
    from dicecfg.world.data import render_into, render_pool

    data.mkdir(parents=True, exist_ok=True)
    shards = [("eval", n_eval, 999)] + [
        (f"{k:03d}", min(shard_size, n_images - k * shard_size), k)
        for k in range(math.ceil(n_images / shard_size))
    ]
    todo = [s for s in shards if not (data / f"images_{s[0]}.npy").exists()]
    pool = render_pool(workers) if todo else None  # one pool for every shard
    try:
        for name, n, k in todo:
            if deadline is not None and time.monotonic() > deadline:
                log.info("data: time limit reached; re-run to continue")
                return
            t = time.monotonic()
            captions: list[str] = []

            def write(tmp: str, n=n, k=k, captions=captions) -> None:  # workers fill the file in place
                captions += render_into(tmp, n, 1_000_000 * (seed + 1) + 1000 * k, pool=pool, world=world)

            atomic_write(
                data / f"images_{name}.npy.part", write
            )  # whole, then renamed below with its captions
            atomic_write_json(data / f"captions_{name}.json", captions)
            os.replace(data / f"images_{name}.npy.part", data / f"images_{name}.npy")  # the shard is done
            log.info("data: shard %s, %d renders in %.1f s", name, n, time.monotonic() - t)
            yield {"shard": name, "n": n, "seconds": time.monotonic() - t}
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def load_data(out: Path, split: str = "train", images: bool = True) -> tuple[np.ndarray | None, list[str]]:
    """All training shards concatenated (split='train') or the eval renders (split='eval')."""
    names = (
        ["eval"] if split == "eval" else sorted(p.stem[7:] for p in (out / "data").glob("images_[0-9]*.npy"))
    )
    if not names:
        raise FileNotFoundError(f"no rendered data in {out / 'data'}; run the data stage first")
    arr = np.concatenate([np.load(out / "data" / f"images_{n}.npy") for n in names]) if images else None
    captions = [c for n in names for c in json.loads((out / "data" / f"captions_{n}.json").read_text())]
    return arr, captions


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def encode_latents(out: Path, vae, device: torch.device) -> dict[str, torch.Tensor]:
    """Posterior mean and std of every training image, encoded once and cached (fp16)."""
    path = out / "unet" / "latents.safetensors"
    if not path.exists():
        images = torch.from_numpy(load_data(out)[0])
        means, stds = [], []
        with torch.no_grad():
            for b in images.split(1024):
                post = vae.encode(to_float(b.to(device))).latent_dist
                means.append(post.mean.half().cpu())
                stds.append(post.std.half().cpu())
        atomic_save_tensors(path, {"mean": torch.cat(means), "std": torch.cat(stds)})
    return load_tensors(path, device=str(device))
