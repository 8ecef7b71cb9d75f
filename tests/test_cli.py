import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dicecfg.app.job import ServeJob
from dicecfg.bench.speed import BenchConfig
from dicecfg.cli import main
from dicecfg.errors import InputError
from dicecfg.evaluation.analysis import AnalyzeConfig
from dicecfg.evaluation.demo import DemoJob
from dicecfg.evaluation.evaluate import EvalJob
from dicecfg.evaluation.tune import TuneJob
from dicecfg.sampling.job import SampleJob
from dicecfg.training.ceiling import CeilingConfig
from dicecfg.training.ceiling_job import CeilingJob
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


@pytest.mark.integration  # end to end: a pipeline, a command or a process
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


@pytest.mark.integration  # end to end: a pipeline, a command or a process
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


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_prompts_that_are_not_utf8_fail_before_any_work(tiny_sd_dir, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\n")
    bad = "a red \udcff circle"  # how Python receives the argument bytes b"a red \xff circle"
    common = ["--model", str(tiny_sd_dir), "--device", "cpu", "-q"]
    runs = [
        (["sample", bad, "--out", str(tmp_path / "s1"), *common], "Prompt 1"),
        (["sample", "ok", "--method", "cfg", "--negative-prompt", "\udcfe", "--out", str(tmp_path / "s2"), *common],
         "Negative prompt 1"),
        (["train", "--prompts", str(tmp_path / "p.txt"), "--validation-prompt", "ok", "--validation-prompt",
          bad, "--validate-every", "1", "--steps", "2", "--out", str(tmp_path / "run"), *common],
         "Validation prompt 2"),
    ]  # fmt: skip
    for argv, who in runs:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"dice: error: {who} (") and "not valid text" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s1").exists() and not (tmp_path / "run").exists()  # the run never started


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_hub_id_without_network_says_so(tmp_path, monkeypatch, capsys):
    from diffusers import DiffusionPipeline

    def offline(*args, **kwargs):  # what diffusers raises when the hub cannot be reached (the cause kept)
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as e:
            raise OSError("Cannot load model someone/model: the model is not fully cached locally") from e

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", offline)
    out = ["--out", str(tmp_path / "s"), "--method", "cfg", "-q"]
    assert main(["sample", "x", "--model", "someone/model", *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dice: error: 'someone/model' is neither a local folder nor reachable on the hub: no "
                          "network is available here") and "hf download someone/model" in err  # fmt: skip
    assert "does not exist" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "make"),
    [
        (["ceiling", "--guidance-scale", "0.5"], lambda: CeilingConfig(guidance_scale=0.5)),
        (["ceiling", "--seed", "-1"], lambda: CeilingConfig(seed=-1)),
        (["train", "--gpus", "0"], lambda: TrainJob(out="run", gpus=0)),
        (["bench", "--dice-stop", "2"], lambda: BenchConfig(dice_stop=2.0)),
        (["bench", "--peer-stop", "nan"], lambda: BenchConfig(peer_stop=float("nan"))),
        (["ceiling", "--limit", "0"], lambda: CeilingJob(limit=0)),
        (["tune", "--seed-sets", "0"], lambda: TuneJob(seed_sets=0)),
        (["demo", "--prompts", "0"], lambda: DemoJob(prompts=0)),
        (["eval", "--gpus", "0"], lambda: EvalJob(gpus=0)),
        (["analyze", "--limit", "0"], lambda: AnalyzeConfig(limit=0)),
        (["serve", "--port", "0"], lambda: ServeJob(port=0)),
        (["sample", "--steps", "0"], lambda: SampleJob(steps=0)),
        (["sample", "--guidance-scale", "nan"], lambda: SampleJob(guidance_scale=float("nan"))),
    ],
)
@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_bad_value_from_python_fails_as_on_the_command_line(argv, make, tmp_path, capsys):
    """Configs and jobs check their values when they are made: the Python API refuses what the CLI refuses,
    with the same one line."""
    assert (
        main(["-q", *argv, *(["--out", str(tmp_path / "o")] if argv[0] not in ("bench", "serve") else [])])
        == 2
    )
    cli_line = capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(InputError) as err:
        make()
    assert cli_line == f"dice: error: {err.value}"


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_eval_with_gpus_checks_its_input_before_starting_processes(tmp_path, monkeypatch, capsys):
    """`dice eval --gpus 2` with bad input says so once, in this process: no processes are started (each would
    print the same line)."""
    import dicecfg.cli

    started = []
    monkeypatch.setattr(dicecfg.cli, "relaunch", lambda argv, n: started.append(n) or 0)
    code = main(["-q", "eval", "--methods", "cfg", "bogus", "--gpus", "2", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not started
    assert len(err) == 1 and err[0].startswith("dice: error: Unknown method 'bogus'")
