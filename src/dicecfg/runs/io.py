"""Safe file writing: every artifact is written to a temporary file, fsynced, then renamed.

A crash or a full disk during a write leaves the previous file intact (POSIX rename is atomic).
Nothing here pickles; tensors go through safetensors. And the rule of every command's output folder
(:func:`check_own_files`): a command replaces only files it wrote itself.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import InputError

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, fsync the result, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save a flat dict of tensors as safetensors, atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never unpickles)."""
    return load_file(str(path), device=device)


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, damaged or not an object."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, a folder, bad JSON or UTF-8
        return None
    return obj if isinstance(obj, dict) else None


def check_own_files(folder: str | os.PathLike, names: Sequence[str], *, command: str, ours: bool) -> None:
    """The output-folder rule: before ``dice <command>`` writes ``names`` (files or folders) into ``folder``, any
    of them that exists and was not written by this command is refused, by name, with the fix. ``ours``: the
    folder holds the command's own record (its JSON, read with :func:`read_record`), the provenance of every
    file in ``names``; re-running the command into its own folder resumes or replaces its own files."""
    folder = Path(folder)
    if ours:
        return
    found = [n for n in names if os.path.lexists(folder / n)]
    if found:
        it = "it" if len(found) == 1 else "them"
        raise InputError(
            f"{folder} holds {', '.join(found)}, not written by `dice {command}`: {it} would be replaced. "
            f"Use another --out folder, or move {it} away."
        )


def read_jsonl(
    path: Path, keep: Callable[[dict[str, Any]], bool] = lambda rec: True, *, warn: bool = True
) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each whole record of an append-only JSON-lines log that ``keep`` accepts. Blank lines
    are skipped; damaged ones (a write cut short by a kill, bad UTF-8, not an object, refused by ``keep``) too,
    with one warning giving their count (unless ``warn`` is False)."""
    out, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and keep(rec):
            out.append((line, rec))
        else:
            bad += 1
    if bad and warn:
        log.warning("%s: skipped %d damaged line(s) (a write cut short?)", path, bad)
    return out
