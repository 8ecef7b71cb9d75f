"""dice eval / dice analyze and the metrics, on tiny random pipelines and tiny random CLIP models."""

import json

import numpy as np
import pytest
import torch

from dicecfg.cli import main
from dicecfg.errors import InputError
from dicecfg.evaluation.evaluate import EvalJob, run_eval
from dicecfg.metrics import PSNR_CAP, psnr, ssim
from dicecfg.metrics.real import MissingWeightsError, RealMetrics, feature_stats, fid, frechet_from_stats

FREE_PROMPTS = ("a corgi on the beach", "a photo of a cat", "a dog on the beach")  # outside the world grammar


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    """A non-zero random sharpener for the tiny pipeline (d = 32)."""
    from dicecfg.bench.speed import random_sharpener

    path = tmp_path_factory.mktemp("sharp")
    random_sharpener(32, "sd", 77, seed=3).save_pretrained(path)
    return path


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_eval_table_nfe_fidelity_and_resume(tiny_sd_dir, sharp_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    cfg = EvalJob(
        out=str(out),
        model=str(tiny_sd_dir),
        sharpeners=(str(sharp_dir),),
        prompts=FREE_PROMPTS,
        methods=("unguided", "cfg", "scaling", "dice"),
        steps=(2,),
        cfg_scales=(5.0,),
        alphas=(1.0,),
        device="cpu",
        batch_size=3,
        progress=False,
    )
    report = run_eval(cfg)
    rows = {(r["method"], r["steps"]): r for r in report["rows"]}
    assert [k[0] for k in rows] == ["unguided", "cfg", "scaling", "dice"] and len(report["rows"]) == 4
    for (method, steps), r in rows.items():
        assert r["nfe"] == steps * (2 if method == "cfg" else 1) and r["n"] == 3 and r["generated"] == 3
        assert r["seconds_per_image"] > 0 and "align_all" not in r  # no world specs for these prompts
    assert rows["cfg", 2]["psnr"] == PSNR_CAP and rows["cfg", 2]["ssim"] == pytest.approx(1.0)
    for m in ("unguided", "scaling", "dice"):
        assert rows[m, 2]["psnr"] < PSNR_CAP and rows[m, 2]["ssim"] < 1.0
    table = (out / "eval.md").read_text()
    assert "| method | setting | steps | NFE | s/img | PSNR vs CFG | SSIM vs CFG |" in table
    assert (out / "eval_nfe.png").stat().st_size > 0
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 12
    mtimes = [p.stat().st_mtime_ns for p in pngs]

    # again through the CLI, cfg and dice at one more step count: only the two new rows are generated
    code = main(
        [
            "-q",
            "eval",
            *FREE_PROMPTS,
            "--model",
            str(tiny_sd_dir),
            "--sharpener",
            str(sharp_dir),
            "--methods",
            "cfg",
            "dice",
            "--steps",
            "1",
            "2",
            "--batch-size",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-plot",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "(6 images generated now)" in printed and "| cfg | w=5 | 1 | 2 |" in printed
    again = json.loads((out / "eval.json").read_text())
    made = {(r["method"], r["steps"]): r["generated"] for r in again["rows"]}
    assert made == {("cfg", 1): 3, ("dice", 1): 3, ("cfg", 2): 0, ("dice", 2): 0}
    assert {(r["method"], r["steps"]): r["nfe"] for r in again["rows"]} == {
        ("cfg", 1): 2,
        ("dice", 1): 1,
        ("cfg", 2): 4,
        ("dice", 2): 2,
    }
    assert [p.stat().st_mtime_ns for p in pngs] == mtimes
    r1 = {r["key"]: r for r in report["rows"]}
    for r in again["rows"]:  # metrics of untouched rows are recomputed from the same PNGs
        if r["key"] in r1:
            assert r["psnr"] == pytest.approx(r1[r["key"]]["psnr"])


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_eval_errors_are_clear(tiny_sd_dir, tmp_path, capsys):
    code = main(
        [
            "-q",
            "eval",
            "a cat",
            "--model",
            str(tiny_sd_dir),
            "--methods",
            "cfg",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "e"),
            "--clip",
            str(tmp_path / "no-clip"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Download" in err and "--clip" in err and "no-clip" in err
    code = main(
        ["-q", "eval", "a cat", "--model", str(tiny_sd_dir), "--device", "cpu", "--out", str(tmp_path / "e")]
    )
    assert code == 2 and "--sharpener" in capsys.readouterr().err


def test_fidelity_metrics():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    assert np.all(psnr(x, x) == PSNR_CAP) and np.allclose(ssim(x, x), 1.0)
    noisy = np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)
    worse = np.clip(x + rng.normal(0, 60, x.shape), 0, 255).astype(np.uint8)
    assert (
        np.all(psnr(worse, x) < psnr(noisy, x))
        and np.all(ssim(worse, x) < ssim(noisy, x))
        and np.all(ssim(noisy, x) < 1)
    )
    mse = ((noisy.astype(float) - x) ** 2).reshape(2, -1).mean(1)
    assert np.allclose(psnr(noisy, x), 10 * np.log10(255**2 / mse))
    # flat images: variances vanish, so SSIM reduces to the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    a, b = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b)[0] == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))


def test_world_metrics_on_renders():
    from dicecfg.metrics.world import alignment, oracle_frechet, world_specs
    from dicecfg.world import heldout_set, render

    items = heldout_set(24)
    images = render([it.scene for it in items])
    specs = [it.spec for it in items]
    assert world_specs([it.prompt for it in items]) == specs and world_specs(FREE_PROMPTS) is None
    right = alignment(images, specs)
    wrong = alignment(images, specs[1:] + specs[:1])  # every image scored against another item's prompt
    assert (
        right["all"].mean() == 1.0
        and wrong["all"].mean() < 0.2
        and wrong["colour"].mean() < right["colour"].mean()
    )
    assert oracle_frechet(images, [it.scene for it in items]) == pytest.approx(0.0, abs=1e-6)
    assert oracle_frechet(images[::-1].copy(), [it.scene for it in items[:12]] * 2) > 0.1


def _tiny_clip(path, tmp_path):
    from helpers import write_clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    write_clip_tokenizer(tmp_path / "cliptok")
    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "cliptok"))
    torch.manual_seed(0)
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        str(path)
    )
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=proc, tokenizer=tok).save_pretrained(str(path))
    return path


def test_real_metrics_offline(tmp_path):
    from safetensors.torch import save_file

    from dicecfg.metrics.real import AestheticMLP, ClipEmbedder, clip_score

    clip_dir = _tiny_clip(tmp_path / "clip", tmp_path)
    torch.manual_seed(1)
    head = AestheticMLP(16).eval()
    save_file(head.state_dict(), str(tmp_path / "aesthetic.safetensors"))
    torch.save(
        head.state_dict(), str(tmp_path / "aesthetic.pth")
    )  # the published format (a plain state dict)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    prompts = ["a red circle", "a blue square", "a cat"]
    metrics = RealMetrics(clip=str(clip_dir), aesthetic=str(tmp_path / "aesthetic.pth"))
    out = metrics(images, prompts)
    emb = ClipEmbedder(clip_dir)
    scores = clip_score(emb, images, prompts)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 100))
    assert out["clip_score"] == pytest.approx(scores.mean())
    cos = (emb.images(images) * emb.texts(prompts)).sum(-1)
    assert np.allclose(scores, 100 * cos.clamp(min=0).numpy(), atol=1e-4)
    with torch.no_grad():
        expected = head(emb.images(images)).squeeze(-1).numpy()
    assert out["aesthetic"] == pytest.approx(expected.mean(), abs=1e-5)
    same = RealMetrics(aesthetic=str(tmp_path / "aesthetic.safetensors"), aesthetic_clip=str(clip_dir))
    assert same(images, prompts)["aesthetic"] == pytest.approx(out["aesthetic"], abs=1e-5)
    with pytest.raises(MissingWeightsError, match="sac\\+logos\\+ava1-l14-linearMSE.pth.*--aesthetic"):
        RealMetrics(clip=str(clip_dir), aesthetic=str(tmp_path / "missing.pth"))
    with pytest.raises(MissingWeightsError, match="Inception.*--inception"):
        RealMetrics(inception=str(tmp_path / "nope.pth"), fid_ref=str(tmp_path / "aesthetic.pth"))


def test_fid_with_stand_in_extractor(tmp_path):
    """FID arithmetic and reference statistics, with a stand-in feature extractor (Inception weights are not
    available offline; the Inception path itself is only exercised on a machine that has them)."""

    def extractor(images):  # per-channel mean and std: a 6-d feature
        x = images.reshape(len(images), -1, 3).astype(np.float64)
        return np.concatenate([x.mean(1), x.std(1)], axis=1)

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", **dict(zip(("mu", "sigma"), feature_stats(extractor(ref)), strict=True)))
    from dicecfg.metrics.real import reference_stats

    stats = reference_stats(tmp_path / "ref.npz", extractor)
    assert fid(ref, extractor, stats) == pytest.approx(0.0, abs=1e-6)
    darker = (ref // 2).astype(np.uint8)
    assert fid(darker, extractor, stats) > 100
    mu, sigma = np.zeros(2), np.eye(2)
    assert frechet_from_stats(mu + [3, 4], sigma, mu, sigma) == pytest.approx(
        25.0
    )  # |dmu|^2, equal covariances
    assert frechet_from_stats(mu, 4 * sigma, mu, sigma) == pytest.approx(2.0)  # tr(4I + I - 2*2I) = 2


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_analyze_groups_and_composition(tiny_sd, tiny_sd_dir, sharp_dir, tmp_path, capsys):
    from dicecfg.evaluation.analysis import analyze, token_groups
    from dicecfg.sharpener import Sharpener

    sharp = Sharpener.from_pretrained(sharp_dir)
    prompts = ["a corgi on the beach", "a cat"]
    groups = token_groups(tiny_sd.tokenizer, prompts, 77)
    assert groups[0, :7].tolist() == [0, 1, 1, 1, 1, 1, 2] and groups[1, :4].tolist() == [0, 1, 1, 2]
    assert (groups[0, 7:] == 3).all() and (groups[1, 4:] == 3).all()
    s1 = analyze(tiny_sd, sharp, prompts, alpha=1.0)
    g = s1["groups"]
    assert g["sos"]["edit_norm"] == 0 and g["sos"]["cosine"] == pytest.approx(1.0)  # token 0 is copied back
    assert sum(x["tokens"] for x in g.values()) == 2 * 77
    assert sum(x["sq_edit"] for x in g.values()) == pytest.approx(s1["total_sq_edit"], rel=1e-9)
    assert sum(x["edit_share"] for x in g.values()) == pytest.approx(1.0)
    assert g["words"]["edit_norm"] > 0 and g["padding"]["cosine"] < 1
    s2 = analyze(tiny_sd, sharp, prompts, alpha=2.0)  # delta is linear in alpha
    for name in ("words", "eos", "padding"):
        assert s2["groups"][name]["edit_norm"] == pytest.approx(2 * g[name]["edit_norm"], rel=1e-5)
        assert s2["groups"][name]["edit_share"] == pytest.approx(g[name]["edit_share"], rel=1e-5)
    assert analyze(tiny_sd, sharp, prompts, alpha=0.0)["total_sq_edit"] == 0
    code = main(
        [
            "-q",
            "analyze",
            *prompts,
            "--model",
            str(tiny_sd_dir),
            "--sharpener",
            str(sharp_dir),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "an"),
        ]
    )
    assert code == 0 and "End-of-text and padding positions hold" in capsys.readouterr().out
    saved = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert saved["groups"]["padding"]["edit_share"] == pytest.approx(g["padding"]["edit_share"], rel=1e-6)
    assert (tmp_path / "an" / "analysis.png").stat().st_size > 0
    assert main(["-q", "analyze", *prompts, "--model", str(tiny_sd_dir), "--sharpener", str(sharp_dir),
                 "--device", "cpu", "--out", str(tmp_path / "an")]) == 0  # its own folder: written again  # fmt: skip


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_analyze_never_replaces_a_users_own_files(tiny_sd_dir, sharp_dir, tmp_path, capsys):
    """The output-folder rule: analysis.md that `dice analyze` did not write is refused, by name, before the
    model loads, and stays as it was."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "analysis.md").write_text("my own notes\n")
    code = main(["-q", "analyze", "a red circle", "--model", str(tiny_sd_dir), "--sharpener", str(sharp_dir),
                 "--device", "cpu", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert (
        code == 2 and err.count("\n") == 1 and "analysis.md" in err and "not written by `dice analyze`" in err
    )
    assert (out / "analysis.md").read_text() == "my own notes\n" and not (out / "analysis.json").exists()


def test_inception_weights_are_read_safely(tmp_path, monkeypatch):
    """The FID glue with a stand-in for torch-fidelity's Inception class (its real weights are not available
    offline): the weights file is read with weights_only=True and handed on as plain tensors."""
    import sys
    import types

    from dicecfg.metrics.real import inception_extractor

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, path):
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)
            self.load_state_dict(torch.load(path, weights_only=True))

        def forward(
            self, x
        ):  # uint8 (N, 3, H, W) -> a tuple with one (N, 4) feature tensor, like torch-fidelity
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            return (self.proj(x.float().mean(dim=(2, 3))),)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    weights = tmp_path / "inception.pth"
    torch.save({f"proj.{k}": v for k, v in torch.nn.Linear(3, 4).state_dict().items()}, weights)
    feats = inception_extractor(weights, batch_size=2)(np.zeros((3, 8, 8, 3), np.uint8))
    assert feats.shape == (3, 4) and feats.dtype == np.float64
    torch.save({"weight": torch.zeros(1), "note": types.SimpleNamespace(x=1)}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        inception_extractor(tmp_path / "evil.pth")


def test_plots_need_no_extra_install():
    """matplotlib is a plain dependency, so `dice eval` draws its plot after `pip install -e .`."""
    from importlib.metadata import requires

    from dicecfg.evaluation.report import pyplot

    reqs = requires("dicecfg") or []
    assert any(r.startswith("matplotlib") and "extra ==" not in r for r in reqs), reqs
    assert pyplot().get_backend().lower() == "agg"


def test_rows_from_spellings_expand_open_settings_and_keep_old_folder_names(sharp_dir):
    from dicecfg import Sharpener
    from dicecfg.evaluation.evaluate import make_rows

    sharp = Sharpener.from_pretrained(sharp_dir)
    cfg = EvalJob(
        methods=("unguided", "cfg", "cfg:stop=0.1", "ag:threshold=0.995", "dice", "dice:alpha=2,stop=0.25"),
        cfg_scales=(5.0, 7.0, 5),
        steps=(20,),
        negative_prompt="blurry",
    )
    rows = make_rows(cfg, {"s-1234": sharp})
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys))  # --cfg-scales 5 and 5.0 are one row
    assert keys[:6] == [
        "unguided_steps20", "cfg-w5_steps20", "cfg-w7_steps20", "cfg-w5-i0-0.1_steps20", "cfg-w7-i0-0.1_steps20",
        "ag-w5-c0.995_steps20",
    ]  # fmt: skip
    assert "dice-a1_steps20_s-1234" in keys and "dice-a2-i0-0.25_steps20_s-1234" in keys
    assert [r.nfe for r in rows[:5]] == [20, 40, 40, 22, 22]
    negs = [r for r in rows if r.negative_prompt]
    assert {r.method.name for r in negs} == {"cfg", "ag", "dice"}  # methods that take one, at the first w
    assert all(getattr(r.method, "guidance_scale", 5.0) == 5.0 for r in negs)
    with pytest.raises(InputError, match="not a setting of cfg"):
        make_rows(EvalJob(methods=("cfg:alpha=2",)), {})


def _eval_args(tiny_sd_dir, out, *extra):
    return ["-q", "eval", *FREE_PROMPTS, "--model", str(tiny_sd_dir), "--methods", "cfg", "--steps", "1",
            "--device", "cpu", "--no-plot", "--out", str(out), *extra]  # fmt: skip


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_eval_folder_keeps_files_it_did_not_write(tiny_sd_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "eval.md").write_text("my notes\n")
    assert main(_eval_args(tiny_sd_dir, mine)) == 2
    err = capsys.readouterr().err
    assert (
        "eval.md, not written by `dice eval`" in err and "another --out" in err and len(err.splitlines()) == 1
    )
    assert (mine / "eval.md").read_text() == "my notes\n" and sorted(p.name for p in mine.iterdir()) == [
        "eval.md"
    ]
    run = tmp_path / "run"  # a training run folder: said so, not 20 differing settings
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps({"config": {"steps": 100, "lr": 1e-4}, "identity": {"steps": 100}})
    )
    before = (run / "run.json").read_bytes()
    assert main(_eval_args(tiny_sd_dir, run)) == 2
    err = capsys.readouterr().err
    assert (
        "is a training run folder" in err
        and "another --out" in err
        and (run / "run.json").read_bytes() == before
    )


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_eval_repairs_damaged_images_and_meta_lines(tiny_sd_dir, tmp_path, capsys, caplog):
    out = tmp_path / "e"
    assert main(_eval_args(tiny_sd_dir, out, "--cfg-scales", "5", "5.0")) == 0
    assert "1 rows over 3 prompts (3 images generated now)" in capsys.readouterr().out  # 5 and 5.0: one row
    assert "1 of the 2 rows asked for repeat another" in caplog.text
    (folder,) = (out / "images").iterdir()
    first, *_ = sorted(folder.glob("*.png"))
    first.write_bytes(first.read_bytes()[:200])  # a PNG cut short
    with open(folder / "meta.jsonl", "a", encoding="utf-8") as f:
        f.write('\n{"index": 1, "se')  # a blank line and a line cut by a kill
    caplog.clear()
    assert (
        main(_eval_args(tiny_sd_dir, out)) == 0
    )  # re-run: the cut image is made again, the cut line skipped
    assert "(1 images generated now)" in capsys.readouterr().out
    assert "1 damaged image(s)" in caplog.text and caplog.text.count("skipped 1 damaged line(s)") == 1
    from PIL import Image

    assert Image.open(first).load() is not None  # whole again
    row = json.loads((out / "eval.json").read_text())["rows"][0]
    assert row["n"] == 3 and row["nfe"] == 2 and row["seconds_per_image"] > 0
    lines = (folder / "meta.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["index"] == 0  # the new record starts a line of its own


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_heldout_limit_is_bounded_before_work(monkeypatch, tmp_path, capsys):
    from dicecfg.evaluation.evaluate import prompt_set

    with pytest.raises(InputError, match="held-out set has 512 prompts"):
        prompt_set(EvalJob(limit=513))
    assert len(prompt_set(EvalJob(limit=512)).prompts) == 512
    assert len(prompt_set(EvalJob(prompts=("a cat",), limit=10**9)).prompts) == 1  # own prompts: any limit

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr("dicecfg.pipeline.load_pipeline", no_model)
    assert main(["-q", "eval", "--limit", "1000000000", "--out", str(tmp_path / "e")]) == 2
    assert "held-out set has 512 prompts" in capsys.readouterr().err


def test_row_folders_name_values_exactly_and_keep_old_names(sharp_dir):
    from dicecfg.evaluation.evaluate import make_rows

    rows = make_rows(EvalJob(methods=("cfg",), cfg_scales=(5.0, 5.0000001, 7.25), steps=(20,)), {})
    keys = [r.key for r in rows]
    assert len(set(keys)) == 3  # 5 and 5.0000001 used to share the folder cfg-w5
    assert keys[0] == "cfg-w5_steps20" and keys[2] == "cfg-w7.25_steps20"  # folders of older runs: same names
    assert keys[1].startswith("cfg-w5-x") and keys[1].endswith("_steps20")
    again = make_rows(EvalJob(methods=("cfg",), cfg_scales=(5.0000001,), steps=(20,)), {})
    assert again[0].key == keys[1]  # the same value, the same folder: it resumes


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_analyze_limit_beyond_the_heldout_set_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("dicecfg.pipeline.load_pipeline", lambda *a, **k: pytest.fail("the model loaded"))
    assert main(["-q", "analyze", "--limit", "513", "--out", str(tmp_path / "a")]) == 2
    assert "held-out set has 512 prompts" in capsys.readouterr().err


# ---- dice tune: the sharpener folder it records settings in (issue 33, rows 1-4, 7, 16) ------------------------
WORLD_PROMPTS = "a red circle\na blue square\na green triangle\n"  # in the world's grammar


def _tune_args(model, sharp, prompts, *extra, alphas=("1",), stops=("0.5", "1")):
    return ["-q", "tune", "--model", str(model), "--sharpener", str(sharp), "--prompts", str(prompts),
            "--steps", "2", "--alphas", *alphas, "--stops", *stops, "--seed-sets", "1", "--device", "cpu",
            *extra]  # fmt: skip


@pytest.fixture()
def fp16_sharp(sharp_dir, tmp_path):
    """A copy of the random sharpener saved in fp16, with a note of the user's added to its card."""
    from dicecfg import Sharpener

    folder = tmp_path / "sharp16"
    Sharpener.from_pretrained(sharp_dir).half().save_pretrained(folder)
    card = folder / "README.md"
    card.write_text(card.read_text() + "\nMy note: trained on my cats.\n")
    return folder


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_tune_records_in_place_keeping_weights_card_and_history(tiny_sd_dir, fp16_sharp, tmp_path, capsys):
    """Rows 1-2: only config.json and the card's marked section change, through temporary files and renames
    (never save_pretrained, which removes config.json first); the fp16 weights stay byte for byte; the user's
    note stays; the settings replaced are kept in config.json's sampling_history."""
    import dicecfg.evaluation.tune as tune_mod

    (tmp_path / "p.txt").write_text(WORLD_PROMPTS)
    weights = (fp16_sharp / "model.safetensors").read_bytes()
    assert main(_tune_args(tiny_sd_dir, fp16_sharp, tmp_path / "p.txt")) == 0
    first = json.loads((fp16_sharp / "config.json").read_text())
    assert first["sampling"]["stop"] in (0.5, 1.0) and first["sampling_history"] == []
    assert main(_tune_args(tiny_sd_dir, fp16_sharp, tmp_path / "p.txt", alphas=("2",))) == 0
    second = json.loads((fp16_sharp / "config.json").read_text())
    assert second["sampling"]["alpha"] == 2.0
    assert [h["sampling"] for h in second["sampling_history"]] == [first["sampling"]]
    assert (fp16_sharp / "model.safetensors").read_bytes() == weights  # fp16 kept, not re-saved as fp32
    card = (fp16_sharp / "README.md").read_text()
    assert "My note: trained on my cats." in card and card.count("dicecfg:sampling -->") == 2
    assert "alpha=2.0" in card and "# DICE sharpener" in card
    assert not list(fp16_sharp.glob("tune_rows.jsonl"))  # the progress of a finished tune is gone
    capsys.readouterr()

    before = {p.name: p.read_bytes() for p in fp16_sharp.iterdir()}
    real = tune_mod.atomic_write_files.__globals__["_whole_temp"]

    def full_disk(path, write):  # the card's temporary file cannot be written whole
        if path.name == "README.md":
            raise OSError(28, "No space left on device")
        return real(path, write)

    monkey = pytest.MonkeyPatch()
    monkey.setitem(tune_mod.atomic_write_files.__globals__, "_whole_temp", full_disk)
    try:
        with pytest.raises(OSError, match="No space"):
            tune_mod.record_settings(
                fp16_sharp, tune_mod.Sharpener.from_pretrained(fp16_sharp), first["sampling"]
            )
    finally:
        monkey.undo()
    assert {p.name: p.read_bytes() for p in fp16_sharp.iterdir()} == before  # no temp file, nothing changed


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_tune_never_writes_the_shipped_sharpener_or_a_folder_it_cannot_write(
    tiny_sd_dir, sharp_dir, tmp_path, capsys, monkeypatch
):
    """Rows 3-4: the package's own sharpener is refused in one line naming --sharpener; a folder it cannot write
    is found before the model loads, and --no-write --out still measures and writes the table."""
    import dicecfg.pipeline
    import dicecfg.runs.io as io
    from dicecfg.assets import MINI_SHARPENER

    shipped = {p.name: p.read_bytes() for p in MINI_SHARPENER.iterdir() if p.is_file()}

    def no_model(*a, **k):
        raise AssertionError("the model loaded before the refusal")

    with monkeypatch.context() as m:
        m.setattr(dicecfg.pipeline, "load_pipeline", no_model)
        assert main(["-q", "tune", "--limit", "2", "--steps", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "shipped sharpener" in err[0] and "--sharpener" in err[0]

        real = io.tempfile.TemporaryFile

        def read_only(*a, dir=None, **k):
            if dir is not None and str(dir) == str(sharp_dir):
                raise PermissionError(13, "Permission denied")
            return real(*a, dir=dir, **k)

        m.setattr(io.tempfile, "TemporaryFile", read_only)
        (tmp_path / "p.txt").write_text(WORLD_PROMPTS)
        assert main(_tune_args(tiny_sd_dir, sharp_dir, tmp_path / "p.txt")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot write in" in err[0] and "--no-write" in err[0]
    assert {p.name: p.read_bytes() for p in MINI_SHARPENER.iterdir() if p.is_file()} == shipped
    args = _tune_args(tiny_sd_dir, sharp_dir, tmp_path / "p.txt", "--no-write", "--out", str(tmp_path / "t"))
    assert main(args) == 0 and (tmp_path / "t" / "tune.json").is_file()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_an_interrupted_tune_resumes_from_the_rows_it_measured(tiny_sd_dir, sharp_dir, tmp_path, monkeypatch):
    """Row 4: rows measured before an interrupt are read back from tune_rows.jsonl and not sampled again; the
    result equals an uninterrupted run's."""
    import dicecfg.evaluation.tune as tune_mod

    (tmp_path / "p.txt").write_text(WORLD_PROMPTS)
    calls = []
    real = tune_mod.generate

    def counted(*a, **k):
        calls.append(k["method"].spec)
        if len(calls) == 3 and stop_at_3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tune_mod, "generate", counted)
    args = _tune_args(tiny_sd_dir, sharp_dir, tmp_path / "p.txt", "--no-write", "--out", str(tmp_path / "t"))
    stop_at_3 = True
    assert main(args) == 130 and not (tmp_path / "t" / "tune.json").exists()
    assert len((tmp_path / "t" / "tune_rows.jsonl").read_text().splitlines()) == 2  # cfg, cfg-first
    calls.clear()
    stop_at_3 = False
    assert main(args) == 0
    assert len(calls) == 3  # the CFG reference again (its images, not stored) and the two DICE rows
    resumed = json.loads((tmp_path / "t" / "tune.json").read_text())
    calls.clear()
    assert main([*args[:-1], str(tmp_path / "t2")]) == 0 and len(calls) == 4
    whole = json.loads((tmp_path / "t2" / "tune.json").read_text())
    assert resumed["rows"] == whole["rows"] and resumed["best"] == whole["best"]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_tune_measures_only_settings_that_act_and_the_oracle_only_on_the_world(
    tiny_sd_dir, sharp_dir, tmp_path, capsys, caplog
):
    """Row 7: a stop with no guided step at the run's step count is not measured (one warning), and none left
    is refused in one line. Row 16: prompts in the world's grammar on a model that is not of the shapes world
    are scored against CFG, not by the oracle."""
    (tmp_path / "p.txt").write_text(WORLD_PROMPTS)
    args = (tiny_sd_dir, sharp_dir, tmp_path / "p.txt", "--no-write", "--out", str(tmp_path / "t"))
    assert main(_tune_args(*args, stops=("0.25", "1"))) == 0  # at 2 steps, int(0.25 * 2) = 0
    result = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert [r["row"] for r in result["rows"] if r["method"] == "dice"] == ["dice:alpha=1,start=0,stop=1"]
    assert result["best"]["stop"] == 1.0 and "--stops 0.25: no guided step at --steps 2" in caplog.text
    assert result["score"] == "PSNR vs CFG (dB)" and all("fd" not in r for r in result["rows"])
    capsys.readouterr()
    assert main(_tune_args(*args, stops=("0.25", "0.4"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no stop gives a guided step" in err[0]


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_eval_folder_parts_in_the_wrong_shape_are_one_line(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    """Issue 33 row 14: `images` as a file, a row folder as a file, a meta.jsonl as a folder, an `images/` it may
    not write in: one line each, before the model loads; never an OSError traceback."""
    import shutil

    import dicecfg.runs.io as io

    out = tmp_path / "e"
    args = ["-q", "eval", "a red circle", "--model", str(tiny_sd_dir), "--methods", "unguided", "--steps", "1",
            "--device", "cpu", "--no-plot", "--out", str(out)]  # fmt: skip
    assert main(args) == 0  # an eval folder of its own, then its parts in the wrong shape
    monkeypatch.setattr("dicecfg.pipeline.load_pipeline", lambda *a, **k: pytest.fail("the model loaded"))
    shutil.rmtree(out / "images")
    (out / "images").write_text("not a folder")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file where a folder is expected" in err and "Traceback" not in err
    (out / "images").unlink()
    (out / "images").mkdir()
    (out / "images" / "unguided_steps1").write_text("not a folder")
    assert main(args) == 2 and "is a file where a folder is expected" in capsys.readouterr().err
    (out / "images" / "unguided_steps1").unlink()
    (out / "images" / "unguided_steps1" / "meta.jsonl").mkdir(parents=True)
    assert main(args) == 2 and "is a folder where a file is expected" in capsys.readouterr().err
    (out / "images" / "unguided_steps1" / "meta.jsonl").rmdir()
    real = io.tempfile.TemporaryFile

    def read_only(*a, dir=None, **k):  # chmod 555 does not stop root, who runs these tests in CI
        if dir is not None and str(dir) == str(out / "images" / "unguided_steps1"):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(io.tempfile, "TemporaryFile", read_only)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write in" in err and "Permission denied" in err


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_eval_makes_again_images_without_a_record(tiny_sd_dir, tmp_path):
    """Issue 33 row 10: an image a stopped process wrote without its meta.jsonl line is made again (same seed,
    same image) and gets its record."""
    out = tmp_path / "e"
    job = EvalJob(out=str(out), model=str(tiny_sd_dir), prompts=FREE_PROMPTS, methods=("unguided",), steps=(1,),
                  device="cpu", plot=False, progress=False)  # fmt: skip
    run_eval(job)
    meta = out / "images" / "unguided_steps1" / "meta.jsonl"
    lines = meta.read_text().splitlines()
    meta.write_text(lines[0] + "\n")
    again = run_eval(job)
    assert again["rows"][0]["generated"] == 2
    assert sorted(json.loads(ln)["index"] for ln in meta.read_text().splitlines()) == [0, 1, 2]


def test_eval_rows_are_the_methods_as_they_act_at_their_steps():
    """An interval that gives no guided step at a row's step count (int(0.1 * 9) = 0) is the row of what runs,
    unguided sampling, so eval.json never labels unguided images as CFG on the first steps."""
    from dicecfg.evaluation.evaluate import EvalJob, make_rows
    from dicecfg.sampling.methods import CFG, Unguided

    rows = make_rows(EvalJob(methods=("unguided", "cfg:stop=0.1"), steps=(9, 20)), {}, notice=False)
    assert [r.method for r in rows if r.steps == 9] == [Unguided()]
    assert [r.method for r in rows if r.steps == 20] == [Unguided(), CFG(stop=0.1)]
