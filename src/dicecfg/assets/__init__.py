"""Weights shipped with the package: the mini models (diffusers folders) and their sharpeners, by name.

``mini`` is the shapes world's model (the default everywhere), ``mini-fine`` the shapes-fine world's
(docs/world.md); a sharpener's name is its model's.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError

ASSETS = Path(__file__).resolve().parent
MODELS = {"mini": ASSETS / "mini-model", "mini-fine": ASSETS / "mini-fine-model"}
SHARPENERS = {"mini": ASSETS / "mini-sharpener", "mini-fine": ASSETS / "mini-fine-sharpener"}
MINI_MODEL = MODELS["mini"]
MINI_SHARPENER = SHARPENERS["mini"]


def _require(path: Path, what: str, name: str) -> Path:
    if not (path / ("model_index.json" if what == "model" else "config.json")).is_file():
        raise ModelNotFoundError(
            f"The shipped {what} {name!r} is not installed at {path}. Pass a {what} explicitly "
            "(a local folder or hub id), or reinstall dicecfg from a checkout that has its assets."
        )
    return path


def shipped_model_dir(name: str = "mini") -> Path:
    return _require(MODELS[name], "model", name)


def shipped_sharpener_dir(name: str = "mini") -> Path:
    return _require(SHARPENERS[name], "sharpener", name)


def has_shipped_sharpener(name: str) -> bool:
    """Whether the package ships a sharpener for the shipped model ``name``."""
    return name in SHARPENERS and (SHARPENERS[name] / "config.json").is_file()
