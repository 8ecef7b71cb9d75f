"""What every job (`dice sample`, `eval`, `tune`, `analyze`, `train`, `ceiling`, `serve`) shares around its own
work: the pipeline it runs on, rank 0's work with its error shared with the other ranks, the seed rule and the
standard error of a mean. One way each, so the jobs differ only in what they do."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

from .parallel import Parallel, rank_device

T = TypeVar("T")


def job_pipeline(
    model: str | None, device: str | None = None, dtype: str | None = None, *, training: bool = False
):
    """The pipeline of a job: its device (``cuda`` becomes this process's GPU under a launcher), the dtype for
    that device (``training``: the training default), then ``load_pipeline``."""
    from ..pipeline import load_pipeline, resolve_device, resolve_dtype

    dev = rank_device(resolve_device(device))
    return load_pipeline(model, dtype=resolve_dtype(dtype, dev, training=training), device=dev)


def on_rank_0(par: Parallel, work: Callable[[], T]) -> T | None:
    """Run ``work`` on rank 0 alone (every rank calls this together); an error there is raised on every rank, so
    none waits forever at the next collective. Returns what ``work`` returned on rank 0, None elsewhere."""
    err, value = None, None
    if par.main:
        try:
            value = work()
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            err = e
    par.share_error(err)
    return value


def seeds_of(seed: int, indices: Iterable[int]) -> list[int]:
    """The seed rule of every job: item i gets ``seed + i`` (so an image's seed does not depend on the batch
    size, the process that makes it or the items before it)."""
    return [seed + i for i in indices]


def stderr(x: Any) -> float:
    """Standard error of the mean of ``x`` (sample standard deviation / sqrt(n); 0 for one value)."""
    x = np.asarray(x, dtype=float)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
