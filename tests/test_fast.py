"""The fast sampling paths (dicecfg.sampling.fast): CPU fallback, the graph plumbing with a CPU stand-in capture,
and the compiled path through a cheap torch.compile backend (Inductor takes about a minute per shape on CPU:
benchmarks/fast_path/compile_cache.py measures it)."""

import logging

import numpy as np
import pytest
import torch

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.families import family_of
from dicecfg.sampling import fast as fastmod

STEPS = 3


@pytest.fixture(autouse=True)
def fresh_notices():
    """Each test sees the notices of its own calls: the once-per-process record starts empty."""
    fastmod.NOTICES.forget()
    yield
    fastmod.NOTICES.forget()


P = ["a red circle", "a blue square to the left of a green triangle"]


def _sharpener(pipe, seed=0):
    fam = family_of(pipe)
    torch.manual_seed(seed)
    s = Sharpener(fam.dim(pipe), 64, 4, family=fam.name, num_tokens=fam.num_tokens(pipe))
    for p in s.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return s


def _images(pipe, method, prompts=P, **kw):
    out = generate(pipe, prompts, method=method, num_inference_steps=STEPS, progress=False, **kw)
    return np.stack([s.image for s in out])


def test_flatten_round_trip_and_signature():
    x, y = torch.zeros(2, 3), torch.ones(4, dtype=torch.float16)
    call = ((x, 5), {"cond": {"a": y, "b": None}, "return_dict": False})
    leaves, spec = fastmod.flatten(call)
    assert len(leaves) == 2 and leaves[0] is x and leaves[1] is y
    rebuilt = fastmod.unflatten(spec, iter(leaves))
    assert rebuilt[0][1] == 5 and rebuilt[1]["cond"]["a"] is y and rebuilt[1]["return_dict"] is False
    # same shapes and values -> same graph; another shape, dtype or value -> another graph
    assert fastmod.flatten(((torch.ones(2, 3), 5), call[1]))[1] == spec
    assert fastmod.flatten(((torch.ones(1, 3), 5), call[1]))[1] != spec
    assert fastmod.flatten(((x.double(), 5), call[1]))[1] != spec
    assert fastmod.flatten(((x, 6), call[1]))[1] != spec
    with pytest.raises(fastmod.Unkeyable):
        fastmod.flatten((object(),))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_fast_on_cpu_falls_back_with_one_notice(tiny_sd, caplog):
    sharp = _sharpener(tiny_sd)
    with caplog.at_level(logging.WARNING, logger="dicecfg.sampling.fast"):
        fast = _images(tiny_sd, "dice", sharpener=sharp, fast=True)
        _images(tiny_sd, "cfg", fast=True)
    notices = [r.getMessage() for r in caplog.records if "fast sampling" in r.getMessage()]
    assert notices == ["fast sampling needs a CUDA device (this pipeline runs on cpu); running eager"]
    assert np.array_equal(fast, _images(tiny_sd, "dice", sharpener=sharp))
    assert "forward" not in tiny_sd.unet.__dict__


@pytest.fixture()
def stand_in_capture(monkeypatch):
    """Route the fast path through eager_capture on CPU: same buffers, signatures and copies as on CUDA."""
    monkeypatch.setattr(fastmod, "unsupported", lambda module, device: None)
    monkeypatch.setattr(fastmod, "cuda_capture", fastmod.eager_capture)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart"])
def test_graph_plumbing_matches_eager(family, stand_in_capture, tiny_sd_dir, tiny_sdxl_dir, tiny_pixart_dir):
    pipe = load_pipeline({"sd": tiny_sd_dir, "sdxl": tiny_sdxl_dir, "pixart": tiny_pixart_dir}[family])
    den = family_of(pipe).denoiser(pipe)
    sharp = _sharpener(pipe)
    for method in ("dice", "cfg"):
        eager = _images(pipe, method, sharpener=sharp)
        assert np.array_equal(_images(pipe, method, sharpener=sharp, fast=True), eager), method
        assert "forward" not in den.__dict__  # restored after every call
    graphed = den.__dict__["_dice_graphed"]
    assert len(graphed.graphs) == 2  # one signature of batch B (dice), one of 2B (cfg)
    # other prompts and seeds of the same shapes reuse the graphs, and still match eager
    other = ["a small green circle", "a large red square"]
    eager = _images(pipe, "dice", prompts=other, sharpener=sharp, seeds=7)
    assert np.array_equal(_images(pipe, "dice", prompts=other, sharpener=sharp, seeds=7, fast=True), eager)
    assert len(graphed.graphs) == 2


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_stale_buffers_would_be_caught(stand_in_capture, tiny_sd):
    """The plumbing test can fail: a replay that skips copying the inputs in gives other images."""
    sharp = _sharpener(tiny_sd)
    _images(tiny_sd, "dice", sharpener=sharp, fast=True)  # capture
    graphed = tiny_sd.unet.__dict__["_dice_graphed"]
    (graph,) = graphed.graphs.values()
    graph.inputs[:] = [b.clone() for b in graph.inputs]  # copies now land in buffers the graph never reads
    stale = _images(tiny_sd, "dice", sharpener=sharp, fast=True)
    assert not np.array_equal(stale, _images(tiny_sd, "dice", sharpener=sharp))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_capture_failure_runs_eager(monkeypatch, tiny_sd, caplog):
    monkeypatch.setattr(fastmod, "unsupported", lambda module, device: None)

    def broken(fn, device, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(fastmod, "cuda_capture", broken)
    with caplog.at_level(logging.WARNING, logger="dicecfg.sampling.fast"):
        fast = _images(tiny_sd, "unguided", fast=True)
    assert np.array_equal(fast, _images(tiny_sd, "unguided"))
    assert any("capture failed (RuntimeError" in r.getMessage() for r in caplog.records)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_bench_fast_columns(stand_in_capture, tiny_sd_dir):
    from dicecfg.bench.speed import BenchConfig, run_bench
    from dicecfg.evaluation.report import bench_table

    cfg = BenchConfig(
        model=str(tiny_sd_dir),
        batch_sizes=(1,),
        steps=2,
        repeats=1,
        warmup=0,
        device="cpu",
        decode=False,
        fast="graphs",
    )
    (row,) = run_bench(cfg)
    for k in ("cfg", "dice", "fast_cfg", "fast_dice", "fast_unguided"):
        assert row[f"{k}_ms"] > 0 and len(row["times_ms"][k]) == 1
    assert row["fast_cfg_first_ms"] > 0 and row["fast_dice_first_ms"] > 0  # capture, timed apart
    assert row["speedup_vs_eager_cfg"] == pytest.approx(row["cfg_ms"] / row["fast_dice_ms"])
    assert row["fast_path"].startswith("cuda graphs (2 captured")
    assert row["fast_cfg_max_abs_diff"] == 0.0 and row["fast_dice_max_rel_diff"] == 0.0  # same kernels on CPU
    table = bench_table([row])
    assert "| fast DICE ms |" in table and table.splitlines()[2].count("|") == table.splitlines()[0].count(
        "|"
    )


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_cli_sample_fast_on_cpu(tiny_sd_dir, tmp_path, caplog):
    from dicecfg.cli import main

    args = ["-q", "sample", "a red circle", "--model", str(tiny_sd_dir), "--method", "cfg", "--steps", "2"]
    assert main([*args, "--fast", "--out", str(tmp_path / "f")]) == 0
    assert main([*args, "--out", str(tmp_path / "e")]) == 0
    assert any("needs a CUDA device" in r.getMessage() for r in caplog.records)
    (f,), (e,) = sorted((tmp_path / "f").glob("*.png")), sorted((tmp_path / "e").glob("*.png"))
    from PIL import Image

    # the same pixels (the PNGs differ in the record each carries: its own seconds)
    assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(e)))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_compiled_path_gives_eager_images_and_restores_forward(cheap_compile, tiny_sd):
    sharp = _sharpener(tiny_sd)
    den = tiny_sd.unet
    for method in ("dice", "cfg"):
        eager = _images(tiny_sd, method, sharpener=sharp)
        assert np.array_equal(_images(tiny_sd, method, sharpener=sharp, fast="compile"), eager), method
        assert "forward" not in den.__dict__  # the swap is undone after each pipeline call
    compiled = den.__dict__["_dice_compiled"]
    assert len(cheap_compile) == 1 and not compiled.failed  # one compiled function serves every call
    assert compiled.calls == 2 * STEPS and compiled.first_call_ms > 0
    calls = compiled.calls
    _images(tiny_sd, "dice", prompts=["a green cross"], sharpener=sharp, seeds=9, fast="compile")
    assert den.__dict__.pop("_dice_compiled") is compiled and compiled.calls == calls + STEPS


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_compilation_failure_runs_eager_with_one_notice(monkeypatch, tiny_sd, caplog):

    def broken(forward, graphs):
        def fails(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

        return fails

    monkeypatch.setattr(fastmod, "compile_forward", broken)
    tiny_sd.unet.__dict__.pop("_dice_compiled", None)
    with caplog.at_level(logging.WARNING, logger="dicecfg.sampling.fast"):
        fast = _images(tiny_sd, "unguided", fast="compile")
        _images(tiny_sd, "unguided", fast="compile")
    tiny_sd.unet.__dict__.pop("_dice_compiled")
    assert np.array_equal(fast, _images(tiny_sd, "unguided"))
    said = [r.getMessage() for r in caplog.records if "compiling the denoiser failed" in r.getMessage()]
    assert said == [
        "compiling the denoiser failed (RuntimeError: InvalidCxxCompiler: no working C++ compiler found); running eager"
    ]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_fast_names_a_path_and_the_flag_alone_means_graphs(tiny_sd, tmp_path):
    from dicecfg.cli import build_parser
    from dicecfg.errors import InputError
    from dicecfg.flags import from_flags, spell_bare_consts, take_positionals
    from dicecfg.sampling.job import SampleJob

    with pytest.raises(InputError, match="fast='turbo' is not a fast path"):
        _images(tiny_sd, "unguided", fast="turbo")
    assert [fastmod.fast_mode(v) for v in (False, None, True, "off", "graphs", "compile", "auto")] == [
        "off", "off", "graphs", "off", "graphs", "compile", "auto"
    ]  # fmt: skip

    def job(*argv):
        ns = build_parser().parse_args(["sample", "a red circle", "--out", str(tmp_path), *argv])
        return from_flags(ns, SampleJob).fast

    def spelled(
        *argv,
    ):  # what dice's main hands argparse: a bare word after --fast is a prompt, not its value
        ns, extra = build_parser().parse_known_args(
            spell_bare_consts(["sample", *argv, "--out", str(tmp_path)], SampleJob)
        )
        assert not take_positionals(ns, SampleJob, extra)
        job = from_flags(ns, SampleJob)
        return job.fast, list(job.prompts)

    assert spelled("--fast", "a red car") == ("graphs", ["a red car"])
    assert spelled("b", "--fast", "compile", "a") == ("compile", ["b", "a"])
    assert spelled("--fast", "--seed", "3", "a") == ("graphs", ["a"])

    assert (job(), job("--fast"), job("--fast", "compile"), job("--fast", "off")) == (
        "auto",
        "graphs",
        "compile",
        "off",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "a", "--fast", "turbo"])


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_bench_compiled_columns(cheap_compile, tiny_sd_dir):
    from dicecfg.bench.speed import BenchConfig, run_bench
    from dicecfg.evaluation.report import bench_table

    cfg = BenchConfig(
        model=str(tiny_sd_dir), batch_sizes=(1,), steps=2, repeats=1, warmup=0, device="cpu", decode=False,
        fast="compile",
    )  # fmt: skip
    (row,) = run_bench(cfg)
    assert row["fast_mode"] == "compile" and row["fast_path"].startswith("torch.compile (")
    assert row["fast_dice_first_ms"] > 0 and row["fast_cfg_max_abs_diff"] == 0.0
    assert "| compile |" in bench_table([row])


# ---- fast="auto", the default of the long jobs -------------------------------------------------------------
@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_auto_is_eager_on_cpu_silently(tiny_sd, caplog):
    with caplog.at_level(logging.INFO, logger="dicecfg.sampling.fast"):
        out = list(generate(tiny_sd, P, method="cfg", num_inference_steps=STEPS, progress=False, fast="auto"))
    assert fastmod.resolve_fast("auto", "cpu", 10**6) == "off"
    assert [s.fast for s in out] == ["off", "off"] and not caplog.records  # no notice for auto off CUDA
    assert np.array_equal(np.stack([s.image for s in out]), _images(tiny_sd, "cfg"))


def test_auto_picks_graphs_for_short_jobs_and_compile_for_long_ones(monkeypatch, caplog):
    monkeypatch.setattr(fastmod, "on_cuda", lambda device: True)
    n = fastmod.COMPILE_FROM_IMAGES
    with caplog.at_level(logging.INFO, logger="dicecfg.sampling.fast"):
        picked = [fastmod.resolve_fast("auto", "cuda", k) for k in (0, 1, 2, n - 1, n, 10 * n)]
    assert picked == ["off", "off", "graphs", "graphs", "compile", "compile"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and all("the first call of each shape compiles once, about 52 s" in m for m in said)
    # explicit choices are kept as given, on any device
    assert [fastmod.resolve_fast(v, "cpu", 1) for v in ("off", "graphs", "compile", True)] == [
        "off", "graphs", "compile", "graphs"
    ]  # fmt: skip
    assert n == round(52 / (0.197 - 0.117))  # the derivation in fast.py: cold compile / time saved per image


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_samples_record_the_path_that_ran(monkeypatch, cheap_compile, tiny_sd, caplog):
    def ran(**kw):
        return {
            s.fast
            for s in generate(tiny_sd, P, method="unguided", num_inference_steps=2, progress=False, **kw)
        }

    assert ran(fast="graphs") == {"off"}  # on CPU graphs fall back to eager, and that is what is recorded
    assert ran(fast=False) == {"off"}
    with caplog.at_level(logging.INFO, logger="dicecfg.sampling.fast"):
        assert ran(fast="compile") == {"compile"}
    assert sum("a new shape compiled in" in r.getMessage() for r in caplog.records) == 1
    tiny_sd.unet.__dict__.pop("_dice_compiled")
    monkeypatch.setattr(fastmod, "unsupported", lambda module, device: None)
    monkeypatch.setattr(fastmod, "cuda_capture", fastmod.eager_capture)
    assert ran(fast="graphs") == {"graphs"}
    tiny_sd.unet.__dict__["_dice_graphed"].failed = True  # a capture that failed: eager from then on
    assert ran(fast="graphs") == {"off"}
    tiny_sd.unet.__dict__.pop("_dice_graphed")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_jobs_default_to_auto_and_record_the_path(monkeypatch, cheap_compile, tiny_sd_dir, tmp_path):
    """`dice sample` with several prompts and `dice eval` resolve auto themselves and write the path that ran."""
    import json

    from dicecfg.cli import main

    args = [
        "-q",
        "sample",
        "a red circle",
        "a blue square",
        "--model",
        str(tiny_sd_dir),
        "--method",
        "unguided",
    ]
    assert main([*args, "--steps", "2", "--out", str(tmp_path / "cpu")]) == 0
    lines = (tmp_path / "cpu" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(ln)["fast"] for ln in lines] == ["off", "off"]
    # as on CUDA (the device check and the capture stood in for): a short job runs graphs
    monkeypatch.setattr(fastmod, "on_cuda", lambda device: True)
    monkeypatch.setattr(fastmod, "unsupported", lambda module, device: None)
    monkeypatch.setattr(fastmod, "cuda_capture", fastmod.eager_capture)
    assert main([*args, "--steps", "2", "--out", str(tmp_path / "graphs")]) == 0
    lines = (tmp_path / "graphs" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(ln)["fast"] for ln in lines] == ["graphs", "graphs"]
    # a row long enough (threshold lowered for the test) compiles; eval.json says so per row
    monkeypatch.setattr(fastmod, "COMPILE_FROM_IMAGES", 2)
    ev = ["-q", "eval", "a red circle", "a blue square", "--model", str(tiny_sd_dir), "--methods", "unguided"]
    ev += ["--steps", "2", "--no-plot", "--out", str(tmp_path / "eval")]
    assert main(ev) == 0
    (row,) = json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"]
    assert row["fast"] == "compile"
    assert main([*ev, "--fast", "off"]) == 0  # nothing to make: the path of the images on disk stays
    (row,) = json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"]
    assert row["fast"] == "compile" and row["generated"] == 0
