"""The shapes-fine world: the shapes world's scenes plus patterns and dots, settled late in sampling
(see docs/world.md, "The second world")."""

from .captions import VOCAB, FineObjSpec, FineSpec, caption, caption_spec, parse, spec_of
from .heldout import HELDOUT_PAIRS, HELDOUT_SINGLES, HELDOUT_SIZE, heldout_set, is_heldout, validation_set
from .render import render
from .scenes import DOT_COUNTS, PATTERNS, FineObj, FineScene, place_scene, sample_scene, validate_scene

__all__ = [
    "DOT_COUNTS",
    "FineObj",
    "FineObjSpec",
    "FineScene",
    "FineSpec",
    "HELDOUT_PAIRS",
    "HELDOUT_SINGLES",
    "HELDOUT_SIZE",
    "PATTERNS",
    "VOCAB",
    "caption",
    "caption_spec",
    "heldout_set",
    "is_heldout",
    "parse",
    "place_scene",
    "render",
    "sample_scene",
    "spec_of",
    "validate_scene",
    "validation_set",
]
