"""The shipped mini model and its sharpener: offline loading, a CPU quality regression, the demo."""

import json

import numpy as np
import pytest

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.assets import MINI_MODEL, MINI_SHARPENER
from dicecfg.families import check_compatible
from dicecfg.metrics.fidelity import psnr, ssim
from dicecfg.world import Oracle, heldout_set

pytestmark = pytest.mark.skipif(
    not (MINI_MODEL / "model_index.json").is_file(), reason="assets not installed"
)


@pytest.fixture(scope="module")
def pair():
    return load_pipeline(), Sharpener.from_pretrained()


def test_shipped_pair_loads_offline_and_fits(pair):
    pipe, sharp = pair
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.unet.dtype.is_floating_point
    assert check_compatible(pipe, sharp).name == "sd" and sharp.config["train_steps"] > 0
    assert load_pipeline("mini").unet.config == pipe.unet.config
    sizes = [
        p.stat().st_size
        for p in list(MINI_MODEL.rglob("*.safetensors")) + list(MINI_SHARPENER.glob("*.safetensors"))
    ]
    assert max(sizes) <= 16 * 2**20 and sum(sizes) <= 25 * 2**20


@pytest.fixture(scope="module")
def images(pair):
    """32 held-out prompts (spread over the set), their seeds, 20 steps: the setting of BENCHMARKS.md."""
    pipe, sharp = pair
    items = heldout_set()[::16][:32]
    out = {
        m: np.stack(
            [
                s.image
                for s in generate(
                    pipe,
                    [i.prompt for i in items],
                    method=m,
                    sharpener=sharp,
                    seeds=[i.seed for i in items],
                    batch_size=16,
                    progress=False,
                )
            ]
        )
        for m in ("unguided", "cfg", "dice")
    }
    return items, out


def test_dice_moves_toward_cfg(images):
    # measured on this machine (2-core CPU): PSNR vs CFG 22.8 dB (dice) vs 20.2 dB (unguided); SSIM 0.84 vs 0.78
    _, out = images
    gain_psnr = psnr(out["dice"], out["cfg"]).mean() - psnr(out["unguided"], out["cfg"]).mean()
    gain_ssim = ssim(out["dice"], out["cfg"]).mean() - ssim(out["unguided"], out["cfg"]).mean()
    assert gain_psnr > 1.0 and gain_ssim > 0.02, (gain_psnr, gain_ssim)


def test_alignment_of_shipped_pair(images):
    items, out = images
    oracle = Oracle()
    score = {m: oracle.score(v, [i.spec for i in items]) for m, v in out.items()}
    objects = {m: float((s["shape"] * s["colour"] * s["size"]).mean()) for m, s in score.items()}
    # the model draws the named objects well under every method; CFG and DICE do not fall below unguided by
    # more than CPU noise (BENCHMARKS.md: the relation, not the objects, limits all-correct alignment)
    assert min(objects.values()) > 0.8, objects
    assert score["dice"]["all"].mean() >= score["unguided"]["all"].mean() - 0.07


def test_demo_smoke(tmp_path):
    from dicecfg.cli import main

    assert main(["-q", "demo", "--prompts", "2", "--steps", "3", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert [m["method"] for m in summary["methods"]] == ["unguided", "cfg", "dice"]
    assert [m["nfe"] for m in summary["methods"]] == [3, 6, 3]
    assert (tmp_path / "grid.png").stat().st_size > 0
