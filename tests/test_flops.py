"""FLOPs of one distillation update (dicecfg.training.flops), counted on tiny pipelines and on the meta device."""

import pytest
import torch

from dicecfg import Sharpener
from dicecfg.families import family_of
from dicecfg.training.flops import update_flops


def _sharpener(pipe, inner=64, heads=4):
    fam = family_of(pipe)
    return Sharpener(
        fam.dim(pipe), inner, heads, family=fam.name, num_tokens=fam.num_tokens(pipe),
        copy_first_token=fam.copy_first_token,
    )  # fmt: skip


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_counts_scale_with_the_batch_and_the_backward_skips_weight_gradients(tiny_sd):
    one, four = update_flops(tiny_sd, _sharpener(tiny_sd), 1), update_flops(tiny_sd, _sharpener(tiny_sd), 4)
    assert four["total"] == 4 * one["total"] > 0 and four["per_sample"] == one["per_sample"]
    assert one["total"] == one["teacher"] + one["student_forward"] + one["student_backward"]
    fwd = one["denoiser_forward_per_sample"]
    assert one["teacher"] == 2 * fwd  # conditional + unconditional pass
    assert (
        fwd < one["student_forward"] < 2 * fwd
    )  # the denoiser, plus the sharpener (large beside a tiny UNet)
    # gradients of activations only: about one forward; with weight gradients it would be about two
    assert 0.8 * one["student_forward"] < one["student_backward"] < 1.5 * one["student_forward"]
    assert all(not p.requires_grad for p in tiny_sd.unet.parameters())


# hundreds of GFLOPs per denoiser pass: SD1.5's UNet at 512 px, PixArt-alpha's transformer at 256 px (its T5 encodes
# on the meta device without its padding mask: training.flops.unmasked_text_encoders)
@pytest.mark.parametrize("arch,res,floor", [("sd15", 512, 5e11), ("pixart", 256, 2e11)])
def test_full_size_counts_need_no_memory_on_the_meta_device(arch, res, floor):
    from dicecfg.bench.archs import random_pipeline

    pipe = random_pipeline(arch, dtype=torch.bfloat16, device="meta")
    out = update_flops(pipe, _sharpener(pipe, 512, 8), 2, res)
    # the issue's reading: one training sample is about four denoiser passes' worth of work
    assert 3.8 < out["per_sample"] / out["denoiser_forward_per_sample"] < 4.4
    assert out["denoiser_forward_per_sample"] > floor
