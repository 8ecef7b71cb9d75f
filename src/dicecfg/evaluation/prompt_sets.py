"""The prompts a measurement runs on, with their seeds and, where a world's oracle can judge them, the
world's specs (and the scenes they were written from): one type for `dice eval`, `dice tune` and the studies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..runs.jobs import seeds_of


@dataclass(frozen=True)
class PromptSet:
    """Prompts and their seeds; ``specs`` when every prompt is in the world's grammar, ``scenes`` when they were
    written from the world's scenes (the held-out and validation sets)."""

    name: str
    prompts: list[str]
    seeds: list[int]
    specs: list | None = None
    scenes: list | None = None

    @classmethod
    def given(
        cls, prompts: Sequence[str], seed: int, name: str = "prompts", world: str = "shapes"
    ) -> PromptSet:
        """The user's prompts: item i gets ``seed + i``; ``world``'s specs when every prompt parses in its
        grammar."""
        from ..metrics.world import world_specs

        prompts = list(prompts)
        return cls(name, prompts, seeds_of(seed, range(len(prompts))), world_specs(prompts, world))

    @classmethod
    def of_world(cls, items: Sequence, name: str, seed_shift: int = 0) -> PromptSet:
        """Items of the world's held-out or validation set, each with its own seed (+ ``seed_shift``)."""
        return cls(name, [it.prompt for it in items], [it.seed + seed_shift for it in items],
                   [it.spec for it in items], [it.scene for it in items])  # fmt: skip

    def without_oracle(self) -> PromptSet:
        """The same prompts and seeds, judged without the oracle (a model that is not of the shapes world)."""
        return replace(self, specs=None, scenes=None)
