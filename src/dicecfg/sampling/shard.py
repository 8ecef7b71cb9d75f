"""Sampling in several processes, one per GPU (``dice sample --gpus N``, ``dice eval --gpus N``; docs/parallel.md).

Each process takes the images whose index i has ``i % N == rank`` (deterministic, whatever is already on disk),
makes them through ``generate()`` and writes its own image files; since every image has its own seed and
generator, they are the images one process makes. The records of the images (one dict each, with its ``index``)
go to rank 0 a round at a time, and rank 0 alone writes the shared files (``samples.jsonl``, ``meta.jsonl``,
``eval.json``). With the share taken by index, round k of every rank together holds the indices of round k of one
process, so rank 0 writes them in the order one process does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain, islice
from typing import Any

from ..runs.parallel import Parallel


def share(indices: Iterable[int], par: Parallel) -> list[int]:
    """The indices this rank makes: those with ``i % world == rank``."""
    return [i for i in indices if i % par.world == par.rank]


def gathered(
    par: Parallel, records: Iterable[dict[str, Any]], count: int, per_round: int
) -> Iterator[list[dict[str, Any]]]:
    """Rank 0: lists of the records of every rank, sorted by ``index``, ``per_round`` of each rank at a time (one
    at a time in a single process, so each is written as soon as it is made). Other ranks: go through their own
    ``records`` (``count`` of them) in the same rounds and yield nothing. Every rank must call this together."""
    if par.world == 1:
        for r in records:
            yield [r]
        return
    rounds = -(-max(par.all_gather(count)) // per_round)  # the same on every rank
    mine = iter(records)
    for _ in range(rounds):
        parts = par.gather(list(islice(mine, per_round)))
        if parts is not None:
            yield sorted(chain.from_iterable(parts), key=lambda r: r["index"])
