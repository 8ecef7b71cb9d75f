"""Typed exceptions. The CLI turns any ``DiceError`` into a one-line message and exit code 2."""

from __future__ import annotations


class DiceError(Exception):
    """Base class of every error dicecfg raises on purpose (bad input, mismatched files)."""


class SharpenerLoadError(DiceError, OSError):
    """A sharpener file or folder is missing, corrupt, or not a safetensors sharpener."""


class SharpenerMismatchError(DiceError, ValueError):
    """A sharpener does not fit the pipeline it is used with (dimension, token count or family)."""


class UnsupportedPipelineError(DiceError, TypeError):
    """The pipeline's family is not one dicecfg knows."""


class ModelNotFoundError(DiceError, OSError):
    """A model id or path cannot be loaded (offline, missing, or not a diffusers folder)."""


class InputError(DiceError, ValueError):
    """Bad user input: prompts file, image folder, option values."""
