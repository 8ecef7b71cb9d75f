"""Run folders, shared by every trainer (``distill`` and the mini-model recipe): ``run.json`` (resolved config,
versions, commit), ``stats.jsonl`` (append-only) and checkpoints: one atomically written safetensors file with
the weights (``model.*``), the optimizer state (``optim.<i>.*``), any extra tensors of the trainer (the mini
recipe's ``ema.*``) and JSON metadata (``step``, ``param_groups``, ...), so the same command resumes."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CheckpointWriteError, InputError
from .guards import LOCK_NAME
from .io import atomic_save_tensors, atomic_write_json, atomic_write_text, load_tensors, read_jsonl

log = logging.getLogger(__name__)
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


def run_record(config: Any) -> dict[str, Any]:
    """What run.json records of a run: its resolved config (a dataclass), package versions and git commit."""
    return {"config": asdict(config), "versions": versions(), "git_commit": git_commit()}


def _shown(identity: dict[str, Any], key: str) -> str:
    """A setting in a message (a run's identity leaves out negative prompts and the world size at their
    defaults)."""
    return repr(identity[key]) if key in identity else "not recorded (default)"


POOL_FILE = "teacher_pool.safetensors"  # a run's teacher pool; one placed ahead in a new folder is reused


def check_run_folder(run_dir: str | Path) -> None:
    """Refuse to train into a folder that holds anything but one of our runs (a sharpener, other files):
    a run folder holds run.json; an empty or missing folder becomes one, and so does a folder holding only a
    teacher pool placed there ahead (several runs over the same prompts share one; its shape is checked)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / "run.json").is_file():
        return
    found = sorted(p.name for p in run_dir.iterdir() if p.name not in (LOCK_NAME, POOL_FILE))
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise InputError(
            f"{run_dir} is not a run folder (no run.json) and is not empty: it holds {shown}. Training "
            "would write over it; use a new or empty --out folder."
        )


def _damaged(path: Path, error: Any, remedy: str) -> InputError:
    return InputError(f"{path} is damaged ({str(error).splitlines()[0]}). {remedy}")


def write_run_json(
    run_dir: Path, record: dict[str, Any], compare_keys: dict[str, Any], why: dict[str, str] | None = None
) -> None:
    """Write run.json; when one exists, refuse if the settings that shape the result differ, naming each, with
    ``why`` a key must match where that is not obvious (key -> the reason, in the refusal)."""
    path = run_dir / "run.json"
    compare_keys = json.loads(json.dumps(compare_keys, default=str))  # tuples -> lists, as stored
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("identity", {})
        except (ValueError, AttributeError) as e:  # bad JSON or UTF-8, or not an object
            raise _damaged(
                path,
                e,
                "It records the run's settings: restore it, or delete it to resume with the settings given now "
                "(they cannot be checked against the old ones then), or use a new output folder.",
            ) from e
        changed = sorted(k for k in set(old) | set(compare_keys) if old.get(k) != compare_keys.get(k))
        if changed:
            detail = ", ".join(f"{k}: {_shown(old, k)} -> {_shown(compare_keys, k)}" for k in changed)
            reasons = "".join(f" {why[k]}" for k in changed if why and k in why)
            raise InputError(
                f"{run_dir} holds a run with different settings ({detail}).{reasons} "
                "Use a new output folder, or repeat the original settings to resume."
            )
    atomic_write_json(path, {**record, "identity": compare_keys})


def append_stats(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``run_dir/stats.jsonl``."""
    with open(Path(run_dir) / "stats.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + "\n")


def _stats_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each whole record of a stats.jsonl; a damaged line (a write cut short by a kill) is
    skipped with a warning."""
    return read_jsonl(path)


def truncate_stats(run_dir: Path, step: int) -> None:
    """Drop stats written after the checkpoint we resume from, so no step is logged twice (and damaged lines)."""
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return
    keep = [ln for ln, rec in _stats_lines(path) if rec.get("step", step) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def read_stats(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "stats.jsonl"
    if not path.is_file():
        return []
    return [rec for _, rec in _stats_lines(path)]


def heldout_loss(run_dir: Path) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """The first and the last (step, held-out loss) of a run folder's stats.jsonl; None without one."""
    try:
        found = [(r["step"], r["eval_loss"]) for r in read_stats(run_dir) if "eval_loss" in r]
    except OSError:
        return None
    return (found[0], found[-1]) if found else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    name: str = CHECKPOINT,
    extra: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``run_dir/name`` atomically: weights, optimizer state, ``extra`` tensors and ``meta`` (JSON)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for i, state in opt["state"].items():
        for k, v in state.items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors |= extra or {}
    meta = {**(meta or {}), "step": step, "param_groups": opt["param_groups"]}
    try:
        atomic_save_tensors(run_dir / name, tensors, metadata={k: json.dumps(v) for k, v in meta.items()})
    except OSError as e:  # the temporary file is gone and the previous checkpoint untouched (io.py)
        raise CheckpointWriteError(
            f"Could not write the checkpoint of step {step} to {run_dir} ({e.strerror or e}). The previous "
            "checkpoint is intact; free disk space and run the same command to resume."
        ) from e


def read_checkpoint(
    run_dir: str | Path, name: str = CHECKPOINT
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, metadata) of ``run_dir/name``, or None when there is no checkpoint."""
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        tensors = load_tensors(path)
        int(meta["step"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise _damaged(
            path,
            e,
            "Restore it, or delete it to train this run again from step 0 (the run folder is kept; "
            "stats.jsonl is cut back).",
        ) from e
    return tensors, meta


def restore_checkpoint(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Load a checkpoint's weights (strictly) and optimizer state into ``model`` and ``optimizer``.

    Optimizer keys are ``optim.<i>.<name>``; mini-model runs written before the shared format used ``opt.``."""
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith(("optim.", "opt.")):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v if name == "step" else v.to(device)
    optimizer.load_state_dict(
        {"state": state, "param_groups": live_implementation(meta["param_groups"], optimizer)}
    )


# How an optimizer computes its update, not what it computes: the choice of the process that resumes (a run saved
# with the fused CUDA AdamW resumes unfused on a CPU, and the other way round), never the checkpoint's.
IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")


def live_implementation(
    saved: list[dict[str, Any]], optimizer: torch.optim.Optimizer
) -> list[dict[str, Any]]:
    """The checkpoint's param groups (learning rate, betas, weight decay, ...) with ``optimizer``'s own
    ``IMPLEMENTATION_KEYS``: ``load_state_dict`` would otherwise take them from the checkpoint too."""
    live = optimizer.param_groups
    if len(saved) != len(live):  # load_state_dict refuses it, naming the mismatch
        return saved
    return [
        {**group, **{k: own[k] for k in IMPLEMENTATION_KEYS if k in own}}
        for group, own in zip(saved, live, strict=True)
    ]


def load_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, name: str = CHECKPOINT
) -> int:
    """Restore model and optimizer from run_dir; returns the step (0 when there is no checkpoint)."""
    checkpoint = read_checkpoint(run_dir, name)
    if checkpoint is None:
        return 0
    restore_checkpoint(*checkpoint, model, optimizer)
    return int(checkpoint[1]["step"])
