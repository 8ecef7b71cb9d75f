"""Hostile values for every flag of every `dice` command (docs/reliability.md): each ends with exit code 0 or
2, never a traceback, and changes no file that was in the working directory before. The commands come from
``cli.COMMANDS`` and their flags from the commands' dataclasses, so a command or a flag added later is driven
too. Every run points ``--model`` at a folder that does not exist (or takes the hostile value itself): a value
that passes every check fails there, fast, instead of starting work; a run that still goes on past
``TIMEOUT_S`` is a failure (a hang is red; the limit is far above the slowest run on a busy 2-core CPU)."""

import argparse
import dataclasses
import hashlib
import signal
import time
import types
import typing
from pathlib import Path

import pytest

from dicecfg import cli

TIMEOUT_S = 60
NUMBERS = {
    int: ["0", "-1", "99999999999999999999999", "1.5", "abc"],
    float: ["0", "-1", "nan", "inf", "-inf", "1e400", "abc"],
}


class _Timeout(BaseException):  # not an Exception: nothing in dicecfg catches it
    pass


def _value_type(kind):
    """``int | None`` -> int, ``tuple[str, ...]`` -> str."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind


def _flags(cls: type):
    """(field, value type, flag) of every command-line option of the dataclass ``cls``, nested ones included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _flags(hints[f.name])
            continue
        kind = _value_type(hints[f.name])
        if kind is not bool:  # switches take no value
            yield (
                f,
                kind,
                None
                if f.metadata.get("positional")
                else f.metadata.get("flag", "--" + f.name.replace("_", "-")),
            )


def _hostile(f: dataclasses.Field, kind: type, paths: dict[str, str]) -> list[str]:
    if "choices" in f.metadata:
        return ["", "abc"]
    if kind in NUMBERS:
        return NUMBERS[kind]
    return ["", "0", "-1", "nan", *paths.values()]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _base(cls: type, good: dict[str, list[str]]) -> dict[str, list[str]]:
    """Flags that take every command past its own checks to the model loading, where it fails fast."""
    names = {f.name for f, _, _ in _flags(cls)}
    base = {k: v for k, v in good.items() if k in names}
    if "prompts" in names:  # a positional prompt makes a prompt file unnecessary
        base.pop("prompts_file", None)
    return base


def _argv(name: str, flags: dict[str, list[str]], fields: dict[str, str | None]) -> list[str]:
    argv = [name]
    for key, values in flags.items():
        flag = fields[key]
        argv += values if flag is None else [flag, *values]
    return argv


@pytest.mark.integration  # hundreds of runs
def test_every_command_survives_hostile_values(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # hub ids fail at once
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "inside.txt").write_text("keep\n")
    (tmp_path / "notes.txt").write_text("a red circle\n")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    paths = {
        "dir": str(tmp_path / "adir"),
        "file": str(tmp_path / "notes.txt"),
        "missing": str(tmp_path / "missing" / "x"),
        "unwritable": "/proc/dice-fuzz/x",
    }
    good = {
        "model": [str(tmp_path / "no-model")],
        "sharpener": ["mini"],
        "prompts": ["a red circle"],
        "prompts_file": [str(tmp_path / "prompts.txt")],
        "out": [str(tmp_path / "fresh-out")],
    }
    before = _snapshot(tmp_path)

    def alarm(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    failures, runs, timed_out, t0 = [], 0, [], time.perf_counter()
    try:
        for name, (cls, _, _) in cli.COMMANDS.items():
            fields = {f.name: flag for f, _, flag in _flags(cls)}
            base = _base(cls, good)
            for f, kind, _ in _flags(cls):
                for value in _hostile(f, kind, paths):
                    flags = {**base, f.name: [value]}
                    argv = [*_argv(name, flags, fields), "-q"]
                    runs += 1
                    signal.alarm(TIMEOUT_S)
                    try:
                        code = cli.main(argv)
                    except SystemExit as e:  # argparse refused the value
                        code = e.code
                    except _Timeout:
                        code = "timeout"
                        timed_out.append(argv)
                    except Exception as e:  # noqa: BLE001 - a traceback the user would have seen
                        code = f"{type(e).__name__}: {e}"
                    finally:
                        signal.alarm(0)
                    err = capsys.readouterr().err
                    if code not in (0, 2) or "Traceback" in err:
                        failures.append((argv, code, err[-500:]))
                    changed = {p for p, h in before.items() if _snapshot(tmp_path).get(p) != h}
                    if changed:
                        failures.append((argv, "changed files", sorted(changed)))
                        before = _snapshot(tmp_path)
    finally:
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - t0
    print(f"{runs} runs of {len(cli.COMMANDS)} commands in {seconds:.0f} s; timed out: {timed_out}")
    assert runs > 300 and not failures, "\n".join(map(str, failures[:20]))


def test_the_fuzz_walks_every_flag():
    """The walk above reaches every flag argparse knows (bools aside), so a new flag cannot hide from it."""
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, (cls, _, _) in cli.COMMANDS.items():
        walked = {flag or f.name for f, _, flag in _flags(cls)}
        known = {
            a.option_strings[0] if a.option_strings else a.dest
            for a in sub.choices[name]._actions
            if not isinstance(a, argparse._HelpAction | argparse.BooleanOptionalAction)
            and a.dest not in ("debug", "quiet")
        }
        assert walked == known, (name, walked ^ known)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0 and name in capsys.readouterr().out
