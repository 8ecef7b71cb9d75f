"""Training data: rendered scenes with one caption each, never a held-out combination.

Items are made in fixed chunks of ``CHUNK`` items; chunk ``k`` draws from its own generator seeded
with ``[seed, k]``, so the result depends only on ``(n, seed)``, not on how many workers made it.
"""

from __future__ import annotations

import logging
import multiprocessing

import numpy as np

from .worlds import DEFAULT_WORLD, World, get_world

log = logging.getLogger(__name__)
CHUNK = 2048


def sample_training_scenes(
    n: int, seed: int, chunk: int = 0, world: str | World = DEFAULT_WORLD
) -> tuple[list, list[str]]:
    """``n`` scenes of ``world`` outside its held-out combinations and one caption each, from generator
    ``[seed, chunk]``."""
    w = get_world(world)
    rng = np.random.default_rng([seed, chunk])
    scenes: list = []
    captions: list[str] = []
    while len(scenes) < n:
        scene = w.sample_scene(rng)
        if w.is_heldout(scene):
            continue
        scenes.append(scene)
        captions.append(w.caption_spec(scene, rng)[0])
    return scenes, captions


def _chunks(n: int, seed: int, world: str) -> list[tuple[int, int, int, str]]:
    """(size, seed, chunk index, world) of each chunk of a dataset of ``n`` items: what fixes its contents."""
    return [(min(CHUNK, n - start), seed, k, world) for k, start in enumerate(range(0, n, CHUNK))]


def _make_chunk(args: tuple[int, int, int, str]) -> tuple[np.ndarray, list[str]]:
    n, seed, chunk, world = args
    scenes, captions = sample_training_scenes(n, seed, chunk, world)
    return get_world(world).render(scenes), captions


def _render_chunk_into(args: tuple[int, int, int, str, str, int]) -> list[str]:
    """Render one chunk straight into rows ``offset:offset + n`` of the .npy at ``path``; return its captions."""
    n, seed, chunk, world, path, offset = args
    scenes, captions = sample_training_scenes(n, seed, chunk, world)
    images = np.load(path, mmap_mode="r+")
    images[offset : offset + n] = get_world(world).render(scenes)
    images.flush()
    return captions


def render_pool(workers: int):
    """A spawn-based pool of ``workers`` render processes (safe on every platform), or None for ``workers <= 1``:
    start it once and pass it to :func:`render_into` for every shard (a pool per shard re-imports every worker)."""
    return multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None


def render_into(path, n: int, seed: int, *, pool=None, world: str = DEFAULT_WORLD) -> list[str]:
    """Write the images of ``make_dataset(n, seed, world=world)`` to a new .npy file at ``path`` and return their
    captions: the same chunks, the same images, but each worker writes its chunk in place (a memory-mapped file),
    so only captions travel back to this process. ``path`` is written as given (not atomically: callers rename)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    res = get_world(world).resolution
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, res, res, 3)).flush()
    tasks = [(*chunk, str(path), chunk[2] * CHUNK) for chunk in _chunks(n, seed, world)]  # + where it goes
    parts = (
        pool.map(_render_chunk_into, tasks)
        if pool is not None and len(tasks) > 1
        else map(_render_chunk_into, tasks)
    )
    return [c for p in parts for c in p]


def make_dataset(
    n: int, seed: int, *, workers: int = 1, world: str = DEFAULT_WORLD
) -> tuple[np.ndarray, list[str]]:
    """``n`` rendered uint8 images (N, H, W, 3) of ``world`` and one caption each; deterministic in
    ``(n, seed, world)``.

    ``workers > 1`` spreads the chunks over a spawn-based process pool (safe on every platform; call it
    under ``if __name__ == "__main__":`` in scripts).
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    res = get_world(world).resolution
    tasks = _chunks(n, seed, world)
    if workers > 1 and len(tasks) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(tasks))) as pool:
            parts = pool.map(_make_chunk, tasks)
    else:
        parts = [_make_chunk(t) for t in tasks]
    log.info("made %d captioned images (seed %d) in %d chunks", n, seed, len(tasks))
    if not parts:
        return np.zeros((0, res, res, 3), dtype=np.uint8), []
    images = np.concatenate([p[0] for p in parts], axis=0)
    captions = [c for p in parts for c in p[1]]
    return images, captions


def export_image_folder(out, n: int, seed: int, *, workers: int = 1) -> int:
    """Write ``n`` training renders as PNGs plus ``metadata.jsonl`` (file_name, text): the captioned-image
    folder layout that ``dice train --images`` reads. Returns the number of images written."""
    import json
    from pathlib import Path

    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, captions = make_dataset(n, seed, workers=workers)
    lines = []
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        name = f"{i:07d}.png"
        Image.fromarray(img).save(out / name)
        lines.append(json.dumps({"file_name": name, "text": cap}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return n


def export_prompts(path, n: int, seed: int, world: str | World = DEFAULT_WORLD) -> int:
    """Write ``n`` training captions of ``world`` (one per line, never held-out combinations) for prompt-only
    training."""
    from pathlib import Path

    _, captions = sample_training_scenes(n, seed, chunk=0, world=world)
    Path(path).write_text("\n".join(captions) + "\n", encoding="utf-8")
    return n
