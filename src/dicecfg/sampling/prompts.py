"""Prompts from the command line and from files (one per line, or JSONL with a caption field)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..runs.io import json_records
from .checks import NOT_TEXT, check_text

CAPTION_KEYS = ("text", "prompt", "caption")


def read_text(path: Path) -> str:
    """A UTF-8 text file (a byte-order mark at its start is dropped: editors on Windows write one), with a clear
    error naming the file (and line) when it is missing or not UTF-8."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as e:
        raise InputError(f"Prompt file {path} does not exist.") from e
    except IsADirectoryError as e:
        raise InputError(
            f"{path} is a folder; a text file (one prompt per line) or JSONL is expected."
        ) from e
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte {e.start}). Save the file as UTF-8.") from e
    except OSError as e:
        raise InputError(f"Cannot read {path} ({e.strerror or e}).") from e
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise InputError(f"{path}:{line}: holds a NUL byte; is it a binary file? Prompts are plain text.")
    return text


def caption_of(record: dict, where: str) -> str:
    """The caption of a JSON record (its first field among ``CAPTION_KEYS``); ``where`` names it in errors."""
    for key in CAPTION_KEYS:
        if isinstance(record.get(key), str):
            return record[key]
    raise InputError(f"{where}: no caption field; expected one of {', '.join(CAPTION_KEYS)}.")


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line; blank lines skipped) or a JSONL file (field text/prompt/caption)."""
    path = Path(path)
    text = read_text(path)
    prompts: list[str] = []
    if path.suffix == ".jsonl":
        for n, record in json_records(text, path):
            caption = caption_of(record, f"{path}:{n}").strip()
            if NOT_TEXT.search(caption):  # a "\\ud800" escape decodes to a lone surrogate
                raise InputError(
                    f"{path}:{n}: the caption holds an escape that is not a character (a lone surrogate "
                    "such as \\ud800, or NUL); write the text itself, as UTF-8."
                )
            prompts.append(caption)
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{path} holds no prompts (empty or only blank lines).")
    return prompts


def collect_prompts(prompts: Sequence[str], prompts_file: str | None) -> list[str]:
    """The prompts given as arguments followed by those of ``prompts_file``; refuses none at all."""
    out = list(prompts)
    check_text(out)  # before the model loads (generate() checks again, for callers from Python)
    if prompts_file:
        out += load_prompts(prompts_file)
    if not out:
        raise InputError("No prompts: pass prompts as arguments or --prompts FILE.")
    return out
