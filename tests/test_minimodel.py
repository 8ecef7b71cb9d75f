"""The mini model: tokenizer, configs and budget, resumable training stages, the assembled pipeline."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from dicecfg.minimodel import model as mm
from dicecfg.minimodel.loop import CKPT
from dicecfg.minimodel.train import MiniTrainConfig, main, run_stage
from dicecfg.runs.folder import read_checkpoint
from dicecfg.world.captions import VOCAB
from dicecfg.world.fine import heldout_set as fine_heldout_set

CAPTIONS = ["a small red circle to the left of a blue square", "there is a big green triangle", ""]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return mm.build_tokenizer(VOCAB, tmp_path_factory.mktemp("tok"))


def test_every_grammar_word_is_one_token(tokenizer):
    for word in VOCAB:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert tokenizer.pad_token == tokenizer.eos_token == mm.EOS
    assert tokenizer.model_max_length == 77


def test_caption_round_trips_and_reloads(tokenizer, tmp_path):
    cap = CAPTIONS[0]
    ids = tokenizer(cap).input_ids
    assert len(ids) == len(cap.split()) + 2 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == cap
    tokenizer.save_pretrained(tmp_path)
    again = mm.CLIPTokenizer.from_pretrained(tmp_path)
    assert again(cap).input_ids == ids
    padded = mm.tokenize(again, [cap, ""])
    assert padded.shape == (2, 77) and (padded[1, 2:] == again.pad_token_id).all()


def test_unknown_words_still_tokenize(tokenizer):
    ids = tokenizer("zebra", add_special_tokens=False).input_ids
    assert len(ids) > 1 and tokenizer.unk_token_id not in ids


def test_default_config_fits_budget(tokenizer):
    cfg = mm.PRESETS["default"]
    modules = {
        "text_encoder": mm.make_text_encoder(cfg, tokenizer),
        "vae": mm.make_vae(cfg),
        "unet": mm.make_unet(cfg),
    }
    sizes = mm.weight_bytes(modules, bytes_per_param=2)
    assert max(sizes.values()) <= mm.WEIGHT_FILE_LIMIT, sizes
    assert sum(sizes.values()) <= mm.WEIGHT_TOTAL_LIMIT, sizes
    assert modules["unet"].config.cross_attention_dim == modules["text_encoder"].config.hidden_size
    assert modules["text_encoder"].config.eos_token_id == tokenizer.eos_token_id
    with torch.no_grad():
        z = modules["vae"].encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, 4, 16, 16)


# ---------------------------------------------------------------- stages on a tiny run
def _fake_make_dataset(n, seed, *, workers=1, world="shapes"):
    """Stand-in for dicecfg.world.data.make_dataset while it does not exist: coloured squares."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 64, 64, 3), 255, np.uint8)
    captions = []
    for i in range(n):
        colour = int(rng.integers(3))
        x = int(rng.integers(0, 48))
        images[i, 20:36, x : x + 16] = 0
        images[i, 20:36, x : x + 16, colour] = 220
        captions.append(f"a {('red', 'green', 'blue')[colour]} square")
    return images, captions


@pytest.fixture(autouse=True)
def _world_data(monkeypatch):
    if importlib.util.find_spec("dicecfg.world.data") is None:
        monkeypatch.setitem(
            sys.modules, "dicecfg.world.data", types.SimpleNamespace(make_dataset=_fake_make_dataset)
        )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


TINY = dict(
    preset="tiny",
    device="cpu",
    progress=False,
    n_images=12,
    shard_size=8,
    n_eval=4,
    workers=1,
    vae_batch=4,
    unet_batch=4,
    text_captions=50,
    text_steps=3,
    text_batch=4,
    warmup=2,
    ckpt_every=1,
)


def _cfg(out, **kw) -> MiniTrainConfig:
    return MiniTrainConfig(out=str(out), **{**TINY, **kw})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Data + VAE + UNet + assemble of a tiny run (shared by the tests below)."""
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("dicecfg.world.data") is None:
            mp.setitem(
                sys.modules, "dicecfg.world.data", types.SimpleNamespace(make_dataset=_fake_make_dataset)
            )
        main(
            [
                "data",
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--n-images",
                "12",
                "--shard-size",
                "8",
                "--n-eval",
                "4",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        for stage in ("text", "vae", "unet", "assemble"):
            run_stage(stage, _cfg(out, vae_steps=3, unet_steps=3))
    return out


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_data_stage_writes_shards(run_dir):
    names = sorted(p.name for p in (run_dir / "data").glob("images_*.npy"))
    assert names == ["images_000.npy", "images_001.npy", "images_eval.npy"]
    assert np.load(run_dir / "data" / "images_001.npy").shape == (4, 64, 64, 3)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_vae_sets_scaling_factor(run_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(run_dir / "vae" / "final")
    assert vae.config.scaling_factor != 0.18215 and np.isfinite(vae.config.scaling_factor)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("stage", ["text", "vae", "unet"])
def test_resume_is_bitwise_identical(run_dir, tmp_path, stage):
    """2 steps, stop, resume to 4 == 4 steps straight."""
    steps = {"text": "text_steps", "vae": "vae_steps", "unet": "unet_steps"}[stage]
    dirs = []
    for name, plan in (("straight", [4]), ("resumed", [2, 4])):
        out = tmp_path / name
        shutil.copytree(run_dir / "data", out / "data")
        if stage == "unet":
            for part in ("vae/final", "text/final", "tokenizer"):
                shutil.copytree(run_dir / part, out / part)
        for n in plan:
            run_stage(stage, _cfg(out, **{steps: n}))
        dirs.append(out)
    (a, ma), (b, mb) = (read_checkpoint(d / stage, CKPT) for d in dirs)
    assert ma["step"] == mb["step"] == 4
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_cached_caption_states_train_as_encoding_every_step(run_dir, tmp_path, caplog):
    """The UNet stage encodes each distinct caption once when the states fit --text-cache-gb; with a budget of
    0 it runs the frozen encoder on every batch. Both see the same states, so both train the same weights."""
    runs = []
    caplog.set_level("INFO", logger="dicecfg.minimodel.train")
    for name, gb, said in (("cached", 16.0, "encoded once"), ("every-step", 0.0, "encoding every step")):
        caplog.clear()
        out = tmp_path / name
        shutil.copytree(run_dir / "data", out / "data")
        for part in ("vae/final", "text/final", "tokenizer"):
            shutil.copytree(run_dir / part, out / part)
        run_stage("unet", _cfg(out, unet_steps=3, text_cache_gb=gb))
        assert said in caplog.text
        runs.append(read_checkpoint(out / "unet", CKPT)[0])
    a, b = runs
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_checkpoints_with_the_old_optimizer_keys_resume_exactly(run_dir, tmp_path):
    """Mini-model checkpoints written before the shared run-folder format named the optimizer state opt.*"""
    import json

    from safetensors.torch import save_file

    dirs = []
    for name, plan in (("straight", [3]), ("old", [2, 3])):
        out = tmp_path / name
        shutil.copytree(run_dir / "data", out / "data")
        for n in plan:
            if n == 3 and name == "old":  # rewrite the step-2 checkpoint with the old key names
                tensors, meta = read_checkpoint(out / "vae", CKPT)
                old = {("opt." + k[6:] if k.startswith("optim.") else k): v for k, v in tensors.items()}
                save_file(old, str(out / "vae" / CKPT), metadata={k: json.dumps(v) for k, v in meta.items()})
            run_stage("vae", _cfg(out, vae_steps=n))
        dirs.append(out)
    (a, _), (b, _) = (read_checkpoint(d / "vae", CKPT) for d in dirs)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_time_limit_stops_with_checkpoint(run_dir, tmp_path):
    out = tmp_path / "limited"
    shutil.copytree(run_dir / "data", out / "data")
    run_stage("vae", _cfg(out, vae_steps=100, max_minutes=0.0))
    tensors, meta = read_checkpoint(out / "vae", CKPT)
    assert meta["step"] == 0 and not meta["finished"]
    assert not (out / "vae" / "final").exists()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_assembled_pipeline_loads_offline_and_generates(run_dir):
    from diffusers import StableDiffusionPipeline

    folder = run_dir / "pipeline"
    assert (folder / "README.md").exists() and "training renders | 12" in (folder / "README.md").read_text()
    sizes = mm.check_budget(folder)
    assert set(sizes) == {
        f"{c}/{f}"
        for c, f in [
            ("text_encoder", "model.safetensors"),
            ("unet", "diffusion_pytorch_model.safetensors"),
            ("vae", "diffusion_pytorch_model.safetensors"),
        ]
    }
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (folder / "tokenizer").iterdir()}
    slow = mm.CLIPTokenizer(
        vocab=str(folder / "tokenizer" / "vocab.json"), merges=str(folder / "tokenizer" / "merges.txt")
    )
    assert (
        slow(CAPTIONS[0]).input_ids
        == mm.CLIPTokenizer.from_pretrained(folder / "tokenizer")(CAPTIONS[0]).input_ids
    )
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32 and pipe.tokenizer.model_max_length == 77
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = pipe(CAPTIONS[:2], num_inference_steps=2, guidance_scale=5.0, generator=gens, output_type="np")
    assert out.images.shape == (2, 64, 64, 3) and np.isfinite(out.images).all()
    # per-image generators: the first image does not depend on the batch
    one = pipe(
        CAPTIONS[:1],
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=[torch.Generator().manual_seed(0)],
        output_type="np",
    ).images
    np.testing.assert_allclose(one[0], out.images[0], atol=1e-4)


def test_config_round_trip():
    cfg = mm.PRESETS["tiny"]
    assert mm.config_from_dict(dataclasses.asdict(cfg)) == cfg


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_unet_trains_on_the_frozen_pretrained_text_encoder(run_dir, tmp_path):
    from transformers import CLIPTextModel

    shipped = CLIPTextModel.from_pretrained(run_dir / "pipeline" / "text_encoder").state_dict()
    pretrained = CLIPTextModel.from_pretrained(run_dir / "text" / "final").state_dict()
    assert shipped.keys() == pretrained.keys()
    for k in shipped:  # the pipeline stores fp16; the encoder was not trained any further
        torch.testing.assert_close(shipped[k].float(), pretrained[k].half().float(), rtol=0, atol=0)
    assert not any(
        k.startswith(("model.text_encoder", "ema.text_encoder"))
        for k in read_checkpoint(run_dir / "unet", CKPT)[0]
    )
    out = tmp_path / "no-text"
    shutil.copytree(run_dir / "data", out / "data")
    shutil.copytree(run_dir / "vae" / "final", out / "vae" / "final")
    with pytest.raises(FileNotFoundError, match="run the text stage first"):
        run_stage("unet", _cfg(out))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_vae_can_be_reused(run_dir, tmp_path):
    from diffusers import AutoencoderKL

    out = tmp_path / "reuse"
    shutil.copytree(run_dir / "data", out / "data")
    run_stage("vae", _cfg(out, vae_from=str(run_dir / "vae" / "final")))
    a = AutoencoderKL.from_pretrained(run_dir / "vae" / "final").state_dict()
    b = AutoencoderKL.from_pretrained(out / "vae" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "vae" / "ckpt.safetensors").exists()
    row = [r for r in map(__import__("json").loads, (out / "stats.jsonl").read_text().splitlines())][-1]
    assert row["event"] == "done" and row["source"] == str(run_dir / "vae" / "final")
    assert np.isfinite(row["psnr_eval"])


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_fine_world_run_records_its_world(tmp_path):
    """A shapes-fine run renders that world, builds its tokenizer from its grammar and records the world in the
    pipeline folder, where the metrics read it."""
    from dicecfg.metrics.world import world_of
    from dicecfg.pipeline import load_pipeline
    from dicecfg.world.fine.captions import VOCAB, parse

    out = tmp_path / "fine"
    cfg = _cfg(out, world="shapes-fine", vae_steps=2, unet_steps=2)
    for stage in ("data", "text", "vae", "unet", "assemble"):
        run_stage(stage, cfg)
    captions = json.loads((out / "data" / "captions_000.json").read_text())
    assert all(parse(c) for c in captions) and any("dot" in c or "stripes" in c for c in captions)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    assert all(len(tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in VOCAB)
    assert json.loads((out / "pipeline" / "dicecfg_world.json").read_text()) == {"world": "shapes-fine"}
    assert world_of(load_pipeline(out / "pipeline")) == "shapes-fine"
    assert world_of(load_pipeline("mini")) == "shapes"
    assert "shapes-fine world" in (out / "pipeline" / "README.md").read_text()
    # dice demo on that world: its held-out prompts, judged by its own oracle (pattern and dots among the keys)
    from helpers import random_sharpener

    from dicecfg.cli import main as dice

    random_sharpener(load_pipeline(out / "pipeline")).save_pretrained(tmp_path / "sharp")
    args = ["-q", "demo", "--world", "shapes-fine", "--model", str(out / "pipeline"), "--prompts", "2"]
    assert (
        dice([*args, "--shown", "2", "--sharpener", str(tmp_path / "sharp"), "--out", str(tmp_path / "d")])
        == 0
    )
    record = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert record["prompts"][0] == fine_heldout_set(1)[0].prompt
    assert "pattern" in json.dumps(record) and "dots" in json.dumps(record)
    assert (
        dice(
            [
                "-q",
                "demo",
                "--world",
                "shapes",
                "--model",
                str(out / "pipeline"),
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 2
    )


def test_every_weight_the_package_ships_fits_its_budget():
    """Both worlds' mini models and their sharpeners together stay within the package's weight budget, each file
    within the per-file limit (the second model's preset is sized for it: docs/mini_model.md)."""
    from dicecfg.assets import ASSETS

    sizes = {str(p.relative_to(ASSETS)): p.stat().st_size for p in ASSETS.rglob("*.safetensors")}
    assert any("mini-model" in k for k in sizes) and any("mini-sharpener" in k for k in sizes)
    assert max(sizes.values()) <= mm.WEIGHT_FILE_LIMIT, sizes
    assert sum(sizes.values()) <= mm.PACKAGE_WEIGHT_LIMIT, sizes
    if any(k.startswith("mini-fine-model/") for k in sizes):  # shipped: its UNet is the preset's, in fp16
        fine = mm.weight_bytes({"unet": mm.make_unet(mm.PRESETS["fine"])}, bytes_per_param=2)
        assert (
            abs(sizes["mini-fine-model/unet/diffusion_pytorch_model.safetensors"] - fine["unet"]) < 2**16
        ), sizes
    else:  # room for the second UNet and VAE
        fine = mm.weight_bytes(
            {"unet": mm.make_unet(mm.PRESETS["fine"]), "vae": mm.make_vae(mm.PRESETS["fine"])},
            bytes_per_param=2,
        )
        assert sum(sizes.values()) + sum(fine.values()) < mm.PACKAGE_WEIGHT_LIMIT


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_model_card_names_a_reused_text_encoder_and_the_unet_it_went_on_from(run_dir, tmp_path):
    """A run that reuses a text encoder (--text-from) and starts its UNet from another pipeline (--unet-init)
    says so on its card, rather than reporting no pre-training and a UNet trained from scratch."""
    from dicecfg.minimodel.report import write_model_card

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    plain = write_model_card(out).read_text()
    assert "reused from" not in plain and "from the UNet of" not in plain
    for stage, field, value in (
        ("text", "text_from", "earlier/pipeline"),
        ("unet", "unet_init", "earlier/pipeline"),
    ):
        path = out / f"run_{stage}.json"
        run = json.loads(path.read_text())
        run["config"][field] = value
        path.write_text(json.dumps(run))
    card = write_model_card(out).read_text()
    assert "| text encoder pre-training steps / batch | reused from `earlier/pipeline` |" in card
    assert "(from the UNet of `earlier/pipeline`)" in card


def test_a_negative_caption_cache_budget_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["unet", "--out", "unused", "--text-cache-gb", "-1"])
    assert e.value.code == 2 and "--text-cache-gb must be >= 0" in capsys.readouterr().err
