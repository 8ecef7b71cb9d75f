"""dice bench on CPU with a tiny pipeline (the GPU table is produced by the same code on CUDA)."""

import json

import pytest

from dicecfg.bench.speed import BenchConfig, run_bench
from dicecfg.cli import main
from dicecfg.evaluation.report import bench_table


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_bench_cpu_tiny_pipeline_and_resume(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "-q",
            "bench",
            "--model",
            str(tiny_sd_dir),
            "--batch-sizes",
            "1",
            "2",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert (
        printed[0] == f"wrote {out}" and printed[1].startswith("| model |") and len(printed) == 5
    )  # table last
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert (
            r["ratio"] > 0
            and r["cfg_ms"] > 0
            and r["dice_ms"] > 0
            and r["ratio"] == pytest.approx(r["cfg_ms"] / r["dice_ms"])
        )
        assert 0 < r["sharpener_pct"] < 100 and r["decode_ms"] > 0 and len(r["times_ms"]["cfg"]) == 1
        assert (
            r["dtype"] == "float32"
            and r["device"].startswith("cpu")
            and r["command"].startswith("dice -q bench")
        )
        assert r["latent_shape"] == [r["batch"], 4, 8, 8] and "torch" in r["versions"]
    # a second run with one more batch size times only the new row
    rows2 = run_bench(
        BenchConfig(
            model=str(tiny_sd_dir),
            batch_sizes=(1, 2, 3),
            steps=2,
            repeats=1,
            warmup=0,
            device="cpu",
            decode=False,
            out=str(out),
        )
    )
    assert [r["batch"] for r in rows2] == [1, 2, 3] and rows2[:2] == rows and rows2[2]["decode_ms"] is None
    assert "| 3 | 2 |" in bench_table(rows2)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_bench_rejects_unknown_arch():
    from dicecfg.errors import InputError

    with pytest.raises(InputError, match="Unknown architecture"):
        run_bench(BenchConfig(archs=("nope",), device="cpu"))
