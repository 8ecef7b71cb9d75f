"""The shapes world: captioned 64x64 scenes with an exact oracle (see docs/world.md)."""

from .captions import VOCAB, ObjSpec, Spec, caption, caption_spec, parse, spec_of
from .data import make_dataset, sample_training_scenes
from .heldout import HELDOUT_PAIRS, HELDOUT_SINGLES, EvalItem, heldout_set, is_heldout, validation_set
from .oracle import Detection, Oracle, frechet_distance, to_uint8_hwc
from .render import degrade, render
from .scenes import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    place_scene,
    relation_holds,
    sample_scene,
    validate_scene,
)

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_RGB",
    "COLOURS",
    "COLOUR_RGB",
    "Detection",
    "EvalItem",
    "HELDOUT_PAIRS",
    "HELDOUT_SINGLES",
    "ObjSpec",
    "Obj",
    "Oracle",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "Scene",
    "Spec",
    "VOCAB",
    "caption",
    "caption_spec",
    "degrade",
    "frechet_distance",
    "heldout_set",
    "is_heldout",
    "make_dataset",
    "parse",
    "place_scene",
    "relation_holds",
    "render",
    "sample_scene",
    "sample_training_scenes",
    "spec_of",
    "to_uint8_hwc",
    "validate_scene",
    "validation_set",
]
