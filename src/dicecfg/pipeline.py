"""Loading diffusers pipelines (hub id, local folder, or the shipped mini model) and what every command shares
about them: the mini-model defaults, the model's id and revision, device and dtype resolution, and the
``model`` / ``device`` / ``dtype`` options."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import torch

from .errors import InputError, ModelNotFoundError, hub_failure
from .flags import opt

log = logging.getLogger(__name__)
DEFAULT_MODEL = "mini"
UNKNOWN_REVISION = "unknown"  # recorded when a model's revision cannot be known (a plain local folder)
SNAPSHOT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")  # a hub-cache snapshot folder


def shipped_name(name_or_path: str | os.PathLike | None) -> str | None:
    """The shipped model a model argument names (``None`` = the default ``"mini"``, or ``"mini-fine"``), else
    None."""
    from .assets import MODELS

    if name_or_path is None:
        return DEFAULT_MODEL
    return str(name_or_path) if str(name_or_path) in MODELS else None


def is_mini(name_or_path: str | os.PathLike | None) -> bool:
    """Whether a model argument means a shipped mini model (``None``, the default, ``"mini"`` or
    ``"mini-fine"``)."""
    return shipped_name(name_or_path) is not None


def default_sharpener(model: str | None, sharpener: str | None) -> str | None:
    """The sharpener to use with ``model``: the one given, else the one shipped for ``model`` when it is a
    shipped mini model that has one; None when there is none (the caller says which option is missing)."""
    from .assets import has_shipped_sharpener

    name = shipped_name(model)
    return sharpener or (name if name and has_shipped_sharpener(name) else None)


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """A shipped model's name (``None``, ``"mini"``, ``"mini-fine"``) -> its folder; anything else unchanged."""
    name = shipped_name(name_or_path)
    if name is not None:
        from .assets import shipped_model_dir

        return str(shipped_model_dir(name))
    return str(name_or_path)


def load_pipeline(
    name_or_path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
):
    """Load a text-to-image pipeline and check that dicecfg supports its family.

    Args:
        name_or_path: a hub id, a local diffusers folder, or None / "mini" for the shipped mini model.
        dtype: torch dtype (or its name: "float16", "bfloat16", "float32"); default float32.
        device: where to move the pipeline; default CPU.
        kwargs: passed to ``DiffusionPipeline.from_pretrained`` (e.g. ``revision``, ``variant``).
    """
    from diffusers import DiffusionPipeline

    from .families import family_of

    hide_torchvision_notices()  # printed while the first pipeline loads, from Python as on the command line
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = resolve_model(name_or_path)
    local = os.path.isdir(path)
    if local:
        if "safety_checker" in _model_index(path):  # SD1.x exports: loaded as None
            kwargs.setdefault("safety_checker", None)
    elif os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ModelNotFoundError(f"No diffusers pipeline folder at {path}.")
    try:
        pipe = DiffusionPipeline.from_pretrained(path, **{_dtype_kwarg(): dtype or torch.float32}, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # missing, offline or damaged
        if not local and (why := hub_failure(path, e)):
            raise ModelNotFoundError(why) from e
        hint = (
            "A component or its config is missing or damaged; re-save the pipeline."
            if local
            else "No network here? Download the model elsewhere and pass its local folder."
        )
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelNotFoundError(f"Could not load '{path}' ({e.__class__.__name__}: {first}). {hint}") from e
    family_of(pipe)  # raises a clear error for unsupported pipelines
    if device is not None:
        pipe = pipe.to(device)
    pipe._dicecfg_source = str(name_or_path or DEFAULT_MODEL)
    pipe._dicecfg_revision = kwargs.get("revision")
    return pipe


class NoTorchvisionNotice(logging.Filter):
    """Drop transformers' notice that an image processor falls back to PIL without torchvision: dicecfg
    never uses those processors (diffusers only names them while loading a pipeline)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


def hide_torchvision_notices() -> None:
    """Filter those notices out of the one transformers logger that prints them (once; nothing else of
    transformers, and none of the caller's own warnings, is touched)."""
    noisy = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, NoTorchvisionNotice) for f in noisy.filters):
        noisy.addFilter(NoTorchvisionNotice())


def _dtype_kwarg() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); use whichever this version knows."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _model_index(path: str) -> dict[str, Any]:
    """The ``model_index.json`` of a local pipeline folder, with a clear error when it is missing or damaged."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise ModelNotFoundError(
            f"{path} is not a diffusers pipeline folder (no model_index.json). Save one with "
            "`pipe.save_pretrained(folder)` or pass a hub id."
        )
    try:
        with open(index, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:  # bad JSON or UTF-8
        raise ModelNotFoundError(f"{index} is damaged: not valid JSON ({e}). Re-save the pipeline.") from e
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise ModelNotFoundError(
            f"{index} is damaged: no pipeline class (_class_name). Re-save the pipeline."
        )
    return data


def model_id(pipe: Any) -> str | None:
    """Best-effort id of the model a pipeline came from (for sharpener metadata)."""
    return (
        getattr(pipe, "_dicecfg_source", None)
        or getattr(pipe, "name_or_path", None)
        or pipe.config.get("_name_or_path")
    )


def model_revision(pipe: Any) -> str:
    """The revision of the model a pipeline came from (for sharpener metadata and run.json): the ``revision``
    given to ``load_pipeline``, else the commit of the hub-cache snapshot its components were read from, else
    ``"unknown"`` (a plain local folder has no revision)."""
    given = getattr(pipe, "_dicecfg_revision", None)
    if given:
        return str(given)
    configs = [getattr(pipe, "config", None)]
    configs += [getattr(m, "config", None) for m in getattr(pipe, "components", {}).values()]
    for config in configs:  # diffusers configs are dicts, transformers configs objects
        path = (
            config.get("_name_or_path")
            if isinstance(config, dict)
            else getattr(config, "_name_or_path", None)
        )
        if isinstance(path, str) and (m := SNAPSHOT.search(path)):
            return m[1]
    return UNKNOWN_REVISION


def resolve_device(device: str | None) -> str:
    """The device to run on: as given, else (None or "auto") cuda when available, cpu otherwise. Refuses a
    device this machine does not have (``cuda`` without CUDA, ``cuda:3`` on a machine with 2 GPUs)."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"Unknown device '{device}': use cpu, cuda, cuda:N or mps.") from e
    if d.type == "cpu":
        return device
    backend = getattr(torch, d.type, None) if d.type in ("cuda", "mps", "xpu") else None
    if backend is None:
        raise InputError(f"Device '{device}' cannot run a pipeline: use cpu, cuda, cuda:N or mps.")
    if not backend.is_available():
        raise InputError(
            f"--device {device}: this machine has no {d.type} device (torch {torch.__version__})."
        )
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if d.index is not None and d.index >= count:
        raise InputError(f"--device {device}: this machine has {count} {d.type} device(s), numbered from 0.")
    return device


def resolve_dtype(dtype: str | None, device: str, training: bool = False) -> torch.dtype:
    """float16 for sampling / bfloat16 for training on CUDA, float32 on CPU, unless given."""
    if dtype:
        value = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
        value = value or getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise InputError(f"Unknown dtype '{dtype}': use fp16, bf16 or fp32.")
        return value
    if device.startswith("cuda"):
        return torch.bfloat16 if training else torch.float16
    return torch.float32


def model_option() -> Any:
    """The ``model`` option of a command."""
    return opt(None, "hub id or local diffusers folder (default: the shipped mini model)", path="model")


def sharpener_option() -> Any:
    """The ``sharpener`` option of a command that samples with DICE."""
    return opt(None, "sharpener folder or hub id (default with the mini model: the shipped one)")


def device_option() -> Any:
    """The ``device`` option of a command."""
    return opt(None, "cuda, cuda:1, cpu, ... (default: cuda if available)")


def dtype_option(training: bool = False) -> Any:
    """The ``dtype`` option of a command (the frozen model's dtype when training)."""
    return opt(
        None, f"fp16, bf16 or fp32 (default: {'bf16' if training else 'fp16'} on CUDA, fp32 elsewhere)"
    )
