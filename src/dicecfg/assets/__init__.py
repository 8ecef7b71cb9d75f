"""Weights shipped with the package: the mini model (a diffusers folder) and its sharpener."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError

ASSETS = Path(__file__).resolve().parent
MINI_MODEL = ASSETS / "mini-model"
MINI_SHARPENER = ASSETS / "mini-sharpener"


def _require(path: Path, what: str) -> Path:
    if not (path / ("model_index.json" if what == "model" else "config.json")).is_file():
        raise ModelNotFoundError(
            f"The shipped mini {what} is not installed at {path}. Pass a model explicitly "
            "(a local diffusers folder or hub id), or reinstall dicecfg from a checkout that has its assets."
        )
    return path


def shipped_model_dir() -> Path:
    return _require(MINI_MODEL, "model")


def shipped_sharpener_dir() -> Path:
    return _require(MINI_SHARPENER, "sharpener")
