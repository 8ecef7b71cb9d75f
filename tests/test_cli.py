import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dicecfg.bench.speed import BenchConfig
from dicecfg.cli import main
from dicecfg.errors import InputError
from dicecfg.training.ceiling import CeilingConfig
from dicecfg.training.job import TrainJob


def _dice(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "dicecfg.cli", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_help_reads_well():
    res = _dice("--help")
    assert res.returncode == 0 and "sample" in res.stdout and "train" in res.stdout
    res = _dice("train", "--help")
    assert (
        "optimizer updates" in res.stdout
        and "--guidance-scale" in res.stdout
        and "--grad-accum" in res.stdout
    )


def test_every_flag_of_every_command_has_help():
    """Help comes from the options' dataclasses (flags.opt), for `dice` and for the mini-model recipe."""
    import argparse

    from dicecfg.cli import build_parser
    from dicecfg.minimodel.train import build_parser as mini_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {**sub.choices, "minimodel.train": mini_parser()}
    assert {"sample", "train", "demo", "eval", "analyze", "bench"} <= set(parsers)
    for name, parser in parsers.items():
        for action in parser._actions:
            assert action.help and action.help.strip(), (name, action.option_strings or action.dest)
    assert "(default: 0.0002)" in sub.choices["train"].format_help()  # the default comes from DistillConfig


def test_train_then_sample_end_to_end(tiny_sd_dir, prompts, tmp_path):
    pfile = tmp_path / "prompts.txt"
    pfile.write_text("\n".join(prompts) + "\n\n")
    run = tmp_path / "run"
    res = _dice(
        "-q",
        "train",
        "--model",
        str(tiny_sd_dir),
        "--prompts",
        str(pfile),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--teacher-pool",
        "8",
        "--teacher-steps",
        "2",
        "--eval-pairs",
        "4",
        "--loss",
        "l2",
        "--guidance-scale",
        "4",
        "--out",
        str(run),
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train_steps"] == 3 and cfg["loss"] == "l2" and cfg["guidance_scale"] == 4.0
    out = tmp_path / "samples"
    res = _dice(
        "-q",
        "sample",
        "a red circle",
        "a blue square",
        "--model",
        str(tiny_sd_dir),
        "--sharpener",
        str(run),
        "--method",
        "dice",
        "--steps",
        "2",
        "--seed",
        "3",
        "--negative-prompt",
        "a green triangle",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    records = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [3, 4] and records[0]["negative_prompt"] == "a green triangle"
    img = np.asarray(Image.open(out / records[1]["file"]))
    assert img.shape == (16, 16, 3)


def test_errors_are_one_line_exit_2(tiny_sd_dir, tmp_path, capsys):
    code = main(
        [
            "sample",
            "x",
            "--model",
            str(tiny_sd_dir),
            "--sharpener",
            str(tmp_path / "missing"),
            "--device",
            "cpu",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dice: error:") and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty.txt").write_text("\n \n")
    code = main(
        [
            "sample",
            "--prompts",
            str(tmp_path / "empty.txt"),
            "--model",
            str(tiny_sd_dir),
            "--method",
            "cfg",
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert code == 2 and "no prompts" in capsys.readouterr().err
    code = main(["sample", "x", "--model", str(tmp_path), "--device", "cpu", "-q", "--method", "cfg"])
    assert code == 2 and "model_index.json" in capsys.readouterr().err
    code = main(
        ["train", "--model", str(tiny_sd_dir), "--out", str(tmp_path / "run"), "--grad-accum", "0", "-q"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "grad_accum must be an integer >= 1" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize(
    ("argv", "make"),
    [
        (["ceiling", "--guidance-scale", "0.5"], lambda: CeilingConfig(guidance_scale=0.5)),
        (["ceiling", "--seed", "-1"], lambda: CeilingConfig(seed=-1)),
        (["train", "--gpus", "0"], lambda: TrainJob(out="run", gpus=0)),
        (["bench", "--dice-stop", "2"], lambda: BenchConfig(dice_stop=2.0)),
        (["bench", "--peer-stop", "nan"], lambda: BenchConfig(peer_stop=float("nan"))),
    ],
)
def test_a_bad_value_from_python_fails_as_on_the_command_line(argv, make, tmp_path, capsys):
    """Configs and jobs check their values when they are made: the Python API refuses what the CLI refuses,
    with the same one line."""
    assert main(["-q", *argv, *(["--out", str(tmp_path / "o")] if argv[0] != "bench" else [])]) == 2
    cli_line = capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(InputError) as err:
        make()
    assert cli_line == f"dice: error: {err.value}"
