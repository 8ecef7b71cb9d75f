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
from collections.abc import Callable, Iterator, Sequence
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
    _commit(_whole_temp(path, write), path)
    return path


def atomic_write_files(folder: str | os.PathLike, writers: dict[str, Callable[[str], None]]) -> None:
    """Write several files of ``folder`` (name -> ``write(tmp_path)``) as one change, as far as POSIX allows: every
    file is first written whole to a temporary file beside it and fsynced; only then are they renamed over the
    old ones, one by one. A failure (full disk, a kill) before the renames leaves every old file untouched and no
    temporary file behind; the renames themselves cannot fail half-written."""
    folder = Path(folder)
    temps: dict[str, str] = {}
    try:
        for name, write in writers.items():
            temps[name] = _whole_temp(folder / name, write)
        for name, tmp in temps.items():
            _commit(tmp, folder / name)
    except BaseException:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def _whole_temp(path: Path, write: Callable[[str], None]) -> str:
    """A temporary file beside ``path`` holding what ``write`` wrote, fsynced, with the usual permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _commit(tmp: str, path: Path) -> None:
    """Rename the whole temporary file ``tmp`` over ``path`` and make the rename durable."""
    try:
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


def check_folder_slot(folder: str | os.PathLike, *, fix: str) -> None:
    """Refuse, in one line ending with ``fix``, a folder a command is about to make or write files in when that
    cannot work: a file where it (or a folder above it) should be, or a folder this process may not write in."""
    folder = Path(folder)
    probe = folder
    while not os.path.lexists(probe):
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == folder else f" (on the way to {folder})"
        raise InputError(f"{probe} is a file where a folder is expected{where}: {fix}.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise InputError(f"cannot write in {probe} ({e.strerror or e}): {fix}.") from e


def check_file_slot(path: str | os.PathLike, *, fix: str) -> None:
    """Refuse, in one line ending with ``fix``, a name a command writes a file under when something else holds
    it: a folder, or a symbolic link (which would lead the write out of the folder)."""
    path = Path(path)
    if path.is_symlink():
        raise InputError(f"{path} is a symbolic link; dice writes only files of its own there: {fix}.")
    if path.is_dir():
        raise InputError(f"{path} is a folder where a file is expected: {fix}.")


def check_own_log(
    path: str | os.PathLike, ours: Callable[[dict[str, Any]], bool], *, command: str, fix: str
) -> None:
    """Before ``dice <command>`` appends to its JSON-lines log ``path``: refuse a symbolic link or a folder under
    that name, and a file none of whose lines is a record of ours (``ours``), which the command did not write."""
    path = Path(path)
    check_file_slot(path, fix=fix)
    if not path.is_file() or not path.stat().st_size:
        return
    if not any(ours(rec) for _, rec in read_jsonl(path, warn=False)):
        raise InputError(f"{path} was not written by `dice {command}` (no record of it): {fix}.")


def json_records(text: str, where: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each line of a JSON-lines input file's ``text`` (``where``: its name in errors),
    read strictly: blank lines are skipped; a line that is not JSON, or JSON that is not an object (``5``,
    ``null``, a list), is an ``InputError`` naming ``file:line``. For the append-only logs dicecfg writes
    itself, where a line cut by a kill is expected, see :func:`read_jsonl`."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise InputError(f"{where}:{n}: invalid JSON ({getattr(e, 'msg', e)}).") from e
        if not isinstance(record, dict):
            raise InputError(f"{where}:{n}: expected a JSON object per line (got {line.strip()[:40]}).")
        yield n, record


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
