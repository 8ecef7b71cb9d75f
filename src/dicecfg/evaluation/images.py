"""The rows of `dice eval` and their images on disk: made once through ``generate()``, named so a re-run resumes.

``out/images/<row key>/<index>-seed<seed>-<prompt hash>.png`` plus ``meta.jsonl`` (seed, NFE, seconds per image,
the fast path it ran on). In several processes (``dice eval --gpus N``) each makes its share of every row
(``sampling.shard``) and rank 0 writes meta.jsonl.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..runs.io import read_jsonl
from ..runs.parallel import Parallel
from ..sampling.generate import generate
from ..sampling.methods import Method
from ..sampling.shard import share
from ..sampling.store import write_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One method with its settings (a ``sampling.methods`` object) at one step count."""

    method: Method
    steps: int
    sharpener: str | None = None  # tag of the sharpener (dice)
    negative_prompt: str | None = None

    @property
    def nfe(self) -> int:
        """Network evaluations per image as planned (Adaptive Guidance: the most; eval.json has the measured)."""
        return self.method.nfe(self.steps)

    @property
    def params(self) -> dict[str, Any]:
        out = self.method.params | ({"sharpener": self.sharpener} if self.sharpener else {})
        return out | ({"negative_prompt": self.negative_prompt} if self.negative_prompt else {})

    @property
    def key(self) -> str:
        """Folder name of the row's images: method and settings, steps (and sharpener, negative prompt)."""
        parts = [self.method.tag + _exact_suffix(self.method), f"steps{self.steps}"]
        if self.sharpener:
            parts.append(self.sharpener)
        if self.negative_prompt:
            parts.append("neg" + hashlib.sha1(self.negative_prompt.encode()).hexdigest()[:8])
        return "_".join(parts)

    @property
    def label(self) -> str:
        return self.method.name + ("+neg" if self.negative_prompt else "")


def _exact_suffix(method: Method) -> str:
    """Nothing when the method's tag names its settings exactly; else ``-x`` and a hash of the exact values. A tag
    writes each value with 6 significant digits (``{:g}``), so w=5.0000001 would share cfg-w5's folder; the
    folders of values it names exactly keep their names (and resume)."""
    values = [(f.name, v) for f in fields(method) if isinstance(v := getattr(method, f.name), float)]
    if all(float(f"{v:g}") == v for _, v in values):
        return ""
    return "-x" + hashlib.sha1(repr(values).encode()).hexdigest()[:8]


def ensure_images(
    pipe,
    row: Row,
    prompts: Sequence[str],
    seeds: Sequence[int],
    folder: Path,
    *,
    batch_size: int = 16,
    height: int | None = None,
    width: int | None = None,
    progress: bool = True,
    fast: bool | str = False,
    par: Parallel | None = None,
) -> int:
    """Generate the row's missing images (PNG + a line in meta.jsonl each); returns how many were made (by every
    rank, on rank 0). With ``par`` of several ranks each rank makes the missing images of its share."""
    par = par or Parallel()
    folder.mkdir(parents=True, exist_ok=True)
    paths = image_paths(folder, prompts, seeds)
    mine = share(range(len(paths)), par)
    damaged = {i for i in mine if paths[i].is_file() and not _readable(paths[i])}
    if damaged:
        log.warning(
            "%s: %d damaged image(s) (cut or unreadable, e.g. %s): made again",
            folder,
            len(damaged),
            paths[min(damaged)].name,
        )
    recorded = meta_records(folder, len(paths), warn=False)
    unrecorded = {i for i in mine if paths[i].is_file() and i not in recorded and i not in damaged}
    if unrecorded:  # a process stopped after writing the image, before rank 0 wrote its line
        log.warning("%s: %d image(s) without a meta.jsonl record: made again", folder, len(unrecorded))
    missing = [i for i in mine if not paths[i].is_file() or i in damaged or i in unrecorded]
    if missing:
        log.info("%s: generating %d of %d images", row.key, len(missing), len(paths))

    def made():  # this rank's missing images: (index, sample, path, record)
        if not missing:
            return
        for s in generate(
            pipe,
            [prompts[i] for i in missing],
            method=row.method,
            seeds=[seeds[i] for i in missing],
            negative_prompt=row.negative_prompt,
            num_inference_steps=row.steps,
            batch_size=batch_size,
            height=height,
            width=width,
            progress=progress,
            fast=fast,
        ):
            i = missing[s.index]
            record = {
                "index": i,
                "seed": s.seed,
                "prompt": s.prompt,
                "nfe": s.nfe,
                "seconds": s.seconds,
                "fast": s.fast,
            }
            yield i, s, paths[i], record

    rounds = write_samples(par, made(), len(missing), batch_size, folder / "meta.jsonl")
    return sum(len(records) for records in rounds)


def image_paths(folder: Path, prompts: Sequence[str], seeds: Sequence[int]) -> list[Path]:
    """One PNG per prompt, named by index, seed and a hash of the prompt (a changed prompt is regenerated)."""
    return [
        folder / f"{i:05d}-seed{seed}-{hashlib.sha1(p.encode()).hexdigest()[:6]}.png"
        for i, (p, seed) in enumerate(zip(prompts, seeds, strict=True))
    ]


def _readable(path: Path) -> bool:
    """Whether a PNG decodes whole (a file cut short, by a full disk or by hand, does not)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, SyntaxError):  # PIL: truncated, unidentified or corrupt
        return False
    return True


def load_images(folder: Path, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in image_paths(folder, prompts, seeds)])


def meta_records(folder: Path, n: int, *, warn: bool = True) -> dict[int, dict]:
    """The meta.jsonl record of each of the row's first ``n`` images that has one (the latest), by index."""
    path = folder / "meta.jsonl"
    if not path.is_file():
        return {}
    return {r["index"]: r for r in read_meta(path, warn=warn) if r["index"] < n}


def meta_mean(folder: Path, n: int, field: str, *, warn: bool = True) -> float | None:
    """Mean of ``field`` (``seconds``, ``nfe``) over the row's first ``n`` images, from the runs that made them."""
    recs = meta_records(folder, n, warn=warn)
    values = [r[field] for r in recs.values() if field in r]
    return float(np.mean(values)) if values else None


def fast_paths(folder: Path, n: int) -> str | None:
    """The fast path the row's first ``n`` images ran on (``"off"`` for eager; several joined by ``+`` when
    runs differed), from meta.jsonl; None where it was not recorded."""
    recs = meta_records(folder, n, warn=False)
    return "+".join(sorted({r["fast"] for r in recs.values() if "fast" in r})) or None


def read_meta(path: Path, *, warn: bool = True) -> list[dict[str, Any]]:
    """The whole records of a row's meta.jsonl; blank lines are skipped, and damaged ones (a write cut short, bad
    UTF-8, a record without its index) with one warning giving the count."""
    return [rec for _, rec in read_jsonl(path, lambda rec: isinstance(rec.get("index"), int), warn=warn)]


def seconds_per_image(folder: Path, n: int) -> float | None:
    """Mean generation time of the row's images, from the runs that made them."""
    return meta_mean(folder, n, "seconds", warn=False)  # meta_mean of the NFE has warned
