"""The command line under bad input and noisy logs: one line `dice: error: ...` and exit 2, never a traceback;
choices listed; prompts may follow options; warnings on lines of their own (docs/reliability.md)."""

import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import dice_sample, one_line_error

from dicecfg import Sharpener
from dicecfg.cli import main


def _broken_model(tmp_path, tiny_sd_dir, name, content):
    import shutil

    model = tmp_path / name
    shutil.copytree(tiny_sd_dir, model)
    (model / "model_index.json").write_bytes(content)
    return model


def _sharpener_with(tmp_path, name, **config):
    path = tmp_path / name
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text()) | config
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_bad_input_is_one_line_exit_2(tiny_sd_dir, prompts, tmp_path, capsys, monkeypatch):
    """The inputs that used to end in a traceback: each now fails with one line, most before the model loads."""
    m = str(tiny_sd_dir)
    pfile, nul, a_file = tmp_path / "p.txt", tmp_path / "nul.txt", tmp_path / "file.txt"
    pfile.write_text("\n".join(prompts) + "\n")
    nul.write_bytes(b"a red circle\na blue\x00 square\n")
    a_file.write_text("keep me\n")
    sample = ["sample", "a", "--model", m, "--method", "cfg", "--device", "cpu", "-q"]
    train = ["train", "--model", m, "--prompts", str(pfile), "--out", str(tmp_path / "run"), "-q"]
    cases = [
        ([*sample, "--prompts", str(tmp_path)], "is a folder"),
        ([*sample, "--prompts", str(nul)], "nul.txt:2: holds a NUL byte"),
        ([*sample, "--seed", str(2**63)], "--seed (seed) is out of range"),
        (["sample", "a", "b", "--seed", str(2**63 - 1), "--model", m, "-q"], "Seeds must lie in"),
        ([*sample, "--out", str(a_file)], "is a file"),
        ([*sample, "--out", str(a_file / "sub")], "is a file, not a folder"),
        ([*sample, "--out", "/proc/dice-out"], "cannot write"),
        ([*sample, "--device", "nonsense"], "Unknown device"),
        ([*sample, "--sharpener", str(_sharpener_with(tmp_path, "h0", heads=0))], "does not describe"),
        ([*sample, "--sharpener", str(_sharpener_with(tmp_path, "h7", heads=7))], "does not describe"),
        ([*train, "--checkpoint-every", "0"], "--checkpoint-every (checkpoint_every) must be >= 1"),
        ([*train, "--log-every", "0"], "--log-every (log_every) must be >= 1"),
        ([*train, "--heads", "7"], "heads (7) must divide inner_dim (512)"),
        ([*train, "--teacher-pool", "0"], "--teacher-pool (teacher_pool) must be >= 1"),
        ([*train, "--resolution", "30", "--device", "cpu"], "resolution"),
        ([*train, "--gpus", "0"], "--gpus (gpus) must be >= 1"),
        ([*train, "--gpus", "-1"], "--gpus (gpus) must be >= 1"),
        ([*train, "--guidance-scale", "nan"], "finite"),
        (["demo", "--prompts", "0"], "--prompts (prompts) must be >= 1"),
        (["demo", "--prompts", "-2"], "--prompts (prompts) must be >= 1"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*sample, "--device", "cuda"], "no cuda device"))
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        cases.append(([*sample, "--out", str(ro / "out")], "cannot write"))
    for content in (b"{not json", b"[1, 2]", b"{}", b'{"_class_name": "NoSuchPipeline"}', b"\xff\xfe"):
        model = _broken_model(tmp_path, tiny_sd_dir, f"m{len(cases)}", content)
        cases.append((["sample", "a", "--model", str(model), "--method", "cfg", "-q"], "model_index.json"
                      if content != b'{"_class_name": "NoSuchPipeline"}' else "Could not load"))  # fmt: skip
    for argv, words in cases:
        one_line_error(capsys, main(argv), words)
    assert a_file.read_text() == "keep me\n" and not list((tmp_path / "run").iterdir())  # nothing written


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("flag", ["--loss", "--xt-source", "--mixed-precision", "--mask-mode"])
def test_free_text_options_are_choices(flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", "x", flag, "nonsense"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_prompts_after_an_option_are_prompts(tiny_sd_dir, tmp_path):
    out = tmp_path / "s"
    assert (
        dice_sample(tiny_sd_dir, out, "a red circle", "--seed", "5", "a blue square", "--method", "unguided")
        == 0
    )
    records = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records] == [("a red circle", 5), ("a blue square", 6)]
    with pytest.raises(SystemExit):  # a command without bare arguments still refuses them
        main(["train", "--out", str(tmp_path / "r"), "stray"])


def test_warnings_get_their_own_line_under_a_progress_bar(capsys):
    from tqdm import tqdm

    from dicecfg.cli import NoTorchvisionNotice, TqdmHandler

    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("dicecfg.test_bar")
    log.addHandler(handler)
    log.propagate = False
    try:
        with tqdm(total=4, desc="distill", file=sys.stderr, mininterval=0) as bar:
            bar.update(1)
            log.warning("careful")
            bar.update(1)
    finally:
        log.removeHandler(handler)
    pieces = [p.strip() for p in re.split(r"[\r\n]", capsys.readouterr().err) if p.strip()]
    assert "WARNING careful" in pieces, pieces  # never glued to a bar: "distill: 25%|...|WARNING careful"
    record = logging.LogRecord(
        "t", logging.WARNING, "", 0, "`X` requires torchvision (not installed)", (), None
    )
    assert not NoTorchvisionNotice().filter(record)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_no_torchvision_notices_on_the_command_line(tiny_sd_dir, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "dicecfg.cli", "sample", "a", "--model", str(tiny_sd_dir), "--method",
         "unguided", "--steps", "1", "--alpha", "2", "--out", str(tmp_path / "s"), "--device", "cpu"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "requires torchvision" not in res.stderr and "Traceback" not in res.stderr
    assert "WARNING --method unguided ignores --alpha" in res.stderr.splitlines()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_path_of_the_wrong_kind_found_late_is_still_one_line(monkeypatch, capsys):
    """Issue 33 row 14, the backstop: a file where a folder goes (or the reverse, or no permission) that a
    command meets after its checks (the folder changed under it) is one line, exit 2, never an OSError
    traceback; --debug shows the traceback."""
    import dicecfg.cli as cli

    for err in (IsADirectoryError(21, "Is a directory", "out/samples.jsonl"),
                NotADirectoryError(20, "Not a directory", "out/images/row"),
                PermissionError(13, "Permission denied", "out/images")):  # fmt: skip

        def fail(job, argv, err=err):
            raise err

        monkeypatch.setitem(cli.COMMANDS, "sample", (cli.SampleJob, fail, "sample"))
        one_line_error(capsys, cli.main(["-q", "sample", "a"]), err.filename, err.strerror, "--out")
        with pytest.raises(type(err)):
            cli.main(["-q", "--debug", "sample", "a"])
