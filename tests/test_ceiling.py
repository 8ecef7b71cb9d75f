"""`dice ceiling`: the per-prompt optimum of the DICE objective, its resume and its report."""

import json

import pytest
import torch
from helpers import TINY_CEILING, interrupt_ceiling
from safetensors.torch import load_file

from dicecfg.cli import main
from dicecfg.errors import InputError
from dicecfg.training.ceiling import CeilingConfig
from dicecfg.training.ceiling_job import ceiling

CFG = TINY_CEILING


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_optimum_lowers_the_heldout_loss_and_reports_every_row(tiny_sd, prompts, tmp_path):
    report = ceiling(tiny_sd, prompts[:3], output_dir=tmp_path / "c", config=CeilingConfig(**CFG))
    rows = {r["row"]: r for r in report.rows}
    intervals = ["cfg [0,0.05)", "cfg [0,0.15)", "cfg [0,0.25)", "cfg [0.15,0.9)"]  # [0,0.1) is cfg-first
    assert list(rows) == ["unguided", "cfg", "cfg-first", *intervals, "optimum"]  # no sharpener given
    assert rows["optimum"]["eval_loss"] < rows["unguided"]["eval_loss"], rows
    assert (
        rows["cfg"]["nfe"] == 2 * rows["optimum"]["nfe"] == 4 and rows["cfg-first"]["nfe"] == 2
    )  # 0 of 2 guided
    assert [rows[r]["nfe"] for r in intervals] == [2, 2, 2, 3]  # of 2 steps, only [0.15,0.9) guides one
    assert "all" in rows["optimum"]  # these prompts are in the shapes-world grammar: the oracle scores them
    saved = json.loads((tmp_path / "c" / "ceiling.json").read_text())
    assert saved["rows"] == report.rows and (tmp_path / "c" / "grid.png").stat().st_size > 0
    assert "| optimum | 2 |" in report.table() and "Best CFG row at <= 2 NFE" in report.table()
    assert saved["comparison"]["cheap_nfe"]["limit"] == 2  # int(2 * 1.25)
    edits = load_file(str(tmp_path / "c" / "edits" / "batch_0000.safetensors"))["delta"]
    assert torch.all(edits[:, 0] == 0) and edits[:, 1:].abs().sum() > 0  # token 0 (<SOS>) is kept


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_interrupted_ceiling_resumes_to_the_same_edits(tiny_sd, prompts, tmp_path, monkeypatch):
    ceiling(tiny_sd, prompts[:3], output_dir=tmp_path / "full", config=CeilingConfig(**CFG))
    interrupt_ceiling(
        monkeypatch,
        lambda: ceiling(tiny_sd, prompts[:3], output_dir=tmp_path / "cut", config=CeilingConfig(**CFG)),
    )
    report = ceiling(tiny_sd, prompts[:3], output_dir=tmp_path / "cut", config=CeilingConfig(**CFG))
    for name in ("batch_0000.safetensors", "batch_0001.safetensors"):
        a = load_file(str(tmp_path / "full" / "edits" / name))
        b = load_file(str(tmp_path / "cut" / "edits" / name))
        assert torch.allclose(a["delta"], b["delta"], atol=1e-6), name
    full = json.loads((tmp_path / "full" / "ceiling.json").read_text())["rows"]
    no_loss = [r["row"].startswith("cfg") and r["row"] != "cfg" for r in full]  # CFG on an interval: no loss
    assert [r["eval_loss"] is None for r in report.rows] == no_loss
    losses = [r["eval_loss"] for r in report.rows if r["eval_loss"] is not None]
    assert losses == pytest.approx([r["eval_loss"] for r in full if r["eval_loss"] is not None], rel=1e-5)
    with pytest.raises(InputError, match="other prompts, seeds or settings") as e:
        ceiling(
            tiny_sd, prompts[:3], output_dir=tmp_path / "cut", config=CeilingConfig(**{**CFG, "steps": 9})
        )
    assert "steps: 8 -> 9" in str(e.value) and "delete" not in str(e.value)  # named; finished work kept
    with pytest.raises(InputError, match=r"prompts: 3 -> 2; seeds: 3 -> 2\)"):
        ceiling(tiny_sd, prompts[:2], output_dir=tmp_path / "cut", config=CeilingConfig(**CFG))
    # progress bars (dice -q) do not shape the result: the run resumes with them on
    again = ceiling(
        tiny_sd, prompts[:3], output_dir=tmp_path / "cut", config=CeilingConfig(**{**CFG, "progress": True})
    )
    assert again.rows == report.rows


@pytest.mark.integration  # the mini model end to end
def test_ceiling_command_on_the_mini_model(tmp_path, capsys):
    args = ["--limit", "2", "--steps", "2", "--pool", "1", "--draws", "1", "--eval-draws", "1"]
    args += ["--teacher-steps", "2", "--num-inference-steps", "2", "--device", "cpu", "--out", str(tmp_path)]
    assert main(["-q", "ceiling", *args]) == 0
    rows = json.loads((tmp_path / "ceiling.json").read_text())["rows"]
    intervals = [
        "cfg [0,0.05)",
        "cfg [0,0.15)",
        "cfg [0,0.25)",
        "cfg [0.15,0.9)",
    ]  # the default cfg_intervals
    assert [r["row"] for r in rows] == ["unguided", "cfg", "cfg-first", *intervals, "optimum", "sharpener"]
    assert all(0 <= r["all"] <= 1 for r in rows)
    assert "held-out loss" in capsys.readouterr().out
    assert main(["-q", "ceiling", "--limit", "0", "--out", str(tmp_path / "x")]) == 2
    assert (
        main(["-q", "ceiling", "--limit", "1000000000", "--out", str(tmp_path / "x")]) == 2
    )  # > 512 prompts
    assert "must be <= 512" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_ceiling_never_replaces_files_it_did_not_write(tmp_path, capsys):
    args = ["-q", "ceiling", "--limit", "1", "--steps", "1", "--device", "cpu", "--out"]
    for theirs in (("grid.png", "ceiling.json"), ("demo.json", "grid.png")):  # the user's; a demo's folder
        out = tmp_path / theirs[0]
        out.mkdir()
        for name in theirs:
            (out / name).write_text(f"my {name}\n")
        assert main([*args, str(out)]) == 2
        err = capsys.readouterr().err
        assert "grid.png" in err and "not written by `dice ceiling`" in err and "another --out" in err
        assert sorted(p.name for p in out.iterdir()) == sorted(theirs)  # nothing written, nothing replaced
        assert all((out / n).read_text() == f"my {n}\n" for n in theirs)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_damaged_ceiling_files_are_named_with_a_remedy(tiny_sd, prompts, tmp_path):
    from safetensors.torch import load, save_file

    config = CeilingConfig(**{**CFG, "steps": 2})
    run = lambda: ceiling(tiny_sd, prompts[:1], output_dir=tmp_path, config=config)  # noqa: E731
    run()
    record = (tmp_path / "ceiling_run.json").read_bytes()
    for damage in (b"{not json", b"\xff\xfe{}"):  # bad JSON, non-UTF-8: named before any work
        (tmp_path / "ceiling_run.json").write_bytes(damage)
        with pytest.raises(InputError, match="ceiling_run.json is damaged.*restore it"):
            run()
    (tmp_path / "ceiling_run.json").write_bytes(record)
    edit = tmp_path / "edits" / "batch_0000.safetensors"
    whole = edit.read_bytes()
    edit.write_bytes(whole[: len(whole) // 2])  # cut short
    with pytest.raises(InputError, match="batch_0000.safetensors is damaged.*Delete it"):
        run()
    save_file({k: torch.cat([v, v]) if v.dim() else v for k, v in load(whole).items()}, str(edit))
    with pytest.raises(InputError, match=r"batch_0000.safetensors is of another shape.*Delete it"):
        run()
    edit.unlink()  # the remedy: that batch is optimised again, the same
    run()
    assert torch.equal(load_file(str(edit))["delta"], load(whole)["delta"])


def test_every_ceiling_seed_comes_from_one_function_with_the_first_versions_numbers():
    """derive_seeds keeps the seeds of the first version (pinned here), so ceiling folders made before it
    resume to the same edits; streams and batches do not share seeds."""
    from dicecfg.training.ceiling import derive_seeds

    assert derive_seeds(5, "pool", 1, 3) == [59595, 59596, 59597]  # seed * 7919 + 10_000 * 2k + i
    assert derive_seeds(5, "eval_x0", 1, 2) == [69595, 69596]  # ... 10_000 * (2k + 1) + i
    assert derive_seeds(5, 7, 1) == [5000031000055]  # step 7's draws of batch 1
    assert derive_seeds(5, -1, 1) == [5000031000047]  # the fixed held-out draws
    assert derive_seeds(2**32 - 1, 299, 3) == [6125067704956955243]  # reduced modulo 2**63
    seen = [s for k in range(3) for st in ("pool", "eval_x0") for s in derive_seeds(0, st, k, 9_999)]
    assert len(set(seen)) == len(seen)
    with pytest.raises(ValueError, match="unknown seed stream"):
        derive_seeds(0, "teacher", 0)
