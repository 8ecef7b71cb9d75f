"""Run directories: ``run.json`` (resolved config, versions, commit), ``stats.jsonl`` (append-only),
``checkpoint.safetensors`` (sharpener + optimizer state + step, one atomically written file)."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointWriteError, InputError
from .io import atomic_save_tensors, atomic_write_json, atomic_write_text, load_tensors

CHECKPOINT = "checkpoint.safetensors"


def versions() -> dict[str, str]:
    out = {"dicecfg": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub", "safetensors"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:  # pragma: no cover
            pass
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _shown(identity: dict[str, Any], key: str) -> str:
    """A setting in a message; settings at their defaults are left out of a run's identity."""
    return repr(identity[key]) if key in identity else "default"


def write_run_json(run_dir: Path, record: dict[str, Any], compare_keys: dict[str, Any]) -> None:
    """Write run.json; when one exists, refuse if the settings that shape the result differ."""
    path = run_dir / "run.json"
    compare_keys = json.loads(json.dumps(compare_keys, default=str))  # tuples -> lists, as stored
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8")).get("identity", {})
        changed = sorted(k for k in set(old) | set(compare_keys) if old.get(k) != compare_keys.get(k))
        if changed:
            detail = ", ".join(f"{k}: {_shown(old, k)} -> {_shown(compare_keys, k)}" for k in changed)
            raise InputError(
                f"{run_dir} holds a run with different settings ({detail}). "
                "Use a new output folder, or repeat the original settings to resume."
            )
    atomic_write_json(path, {**record, "identity": compare_keys})


def append_stats(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "stats.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def truncate_stats(run_dir: Path, step: int) -> None:
    """Drop stats written after the checkpoint we resume from, so no step is logged twice."""
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return
    keep = [
        ln
        for ln in path.read_text(encoding="utf-8").splitlines()
        if ln.strip() and json.loads(ln)["step"] <= step
    ]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def read_stats(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "stats.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def save_checkpoint(
    run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"step": str(step), "param_groups": json.dumps(opt["param_groups"])}
    try:
        atomic_save_tensors(run_dir / CHECKPOINT, tensors, metadata=meta)
    except OSError as e:  # the temporary file is gone and the previous checkpoint untouched (io.py)
        raise CheckpointWriteError(
            f"Could not write the checkpoint of step {step} to {run_dir} ({e.strerror or e}). The previous "
            "checkpoint is intact; free disk space and run the same command to resume."
        ) from e


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore model and optimizer from run_dir; returns the step (0 when there is no checkpoint)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return 0
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_tensors(path)
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v if name == "step" else v.to(device)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])
