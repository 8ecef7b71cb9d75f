"""The one writer of samples on disk, shared by `dice sample` and `dice eval`: ``generate()``'s stream -> a PNG per
image (written atomically, its record embedded as the PNG text chunk ``dicecfg``) -> the records of every rank
gathered to rank 0 (``sampling.shard``) -> whole lines appended to the folder's JSON-lines log.

Each PNG carries its own record, so an image whose line never reached the log (a process killed between
writing its PNG and rank 0 appending the round) can be described again later (:func:`embedded_record`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..runs.io import atomic_write
from ..runs.parallel import Parallel
from .generate import Sample
from .shard import gathered

RECORD_CHUNK = "dicecfg"  # the PNG text chunk holding an image's record


def save_png(path: Path, sample: Sample, record: dict[str, Any]) -> None:
    """Write ``sample``'s image to ``path`` atomically, with ``record`` embedded."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(RECORD_CHUNK, json.dumps(record))
    atomic_write(path, lambda tmp: sample.pil().save(tmp, format="PNG", pnginfo=info))


def embedded_record(path: Path) -> dict[str, Any] | None:
    """The record a PNG written by :func:`save_png` carries; None for any other file or a damaged one."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            rec = json.loads(im.text.get(RECORD_CHUNK, "null"))
    except (OSError, ValueError, SyntaxError, AttributeError):
        return None
    return rec if isinstance(rec, dict) else None


def end_line(path: Path) -> None:
    """Terminate a cut last line of an append-only log, so the next record starts a line of its own (the cut
    line stays one damaged line, skipped with a warning when read)."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append one whole JSON line per record."""
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def write_samples(
    par: Parallel,
    made: Iterable[tuple[int, Sample, Path, dict[str, Any]]],
    count: int,
    per_round: int,
    log: Path,
) -> Iterator[list[dict[str, Any]]]:
    """Write this rank's ``made`` images ((index, sample, path, record), ``count`` of them) as they come; rank 0
    appends every rank's records to ``log`` a round at a time, in index order, after their PNGs, and yields
    each round's records. Every rank must call this together (``sampling.shard.gathered``)."""

    def written() -> Iterator[dict[str, Any]]:
        for i, sample, path, record in made:
            save_png(path, sample, record)
            yield {"index": i, "record": record}

    if par.main:
        end_line(log)
    for items in gathered(par, written(), count, per_round):
        records = [it["record"] for it in items]
        append_records(log, records)
        yield records
