"""enable_dice / disable_dice on the tiny SD, SDXL and PixArt-alpha pipelines: a plain pipe(prompt, ...) call is
exactly the sharpen() call on the stock pipeline, at one network evaluation per step, and disabling restores the
stock pipeline."""

import numpy as np
import pytest
import torch
from helpers import random_sharpener

from dicecfg import Dice, DiceError, disable_dice, enable_dice, generate, load_pipeline, sharpen
from dicecfg.errors import SharpenerMismatchError
from dicecfg.families import family_of

STEPS = 2
P = ["a red circle", "a blue square to the left of a green triangle"]
NEG = "a green triangle"


@pytest.fixture(params=("sd", "sdxl", "pixart"))
def pipe(request):
    return load_pipeline(request.getfixturevalue(f"tiny_{request.param}_dir"))


def run(pipe, *args, seeds=(0, 1), **kwargs):
    """Images of one call with fresh per-image generators (the same seeds give the same noise)."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(*args, num_inference_steps=STEPS, generator=gens, output_type="np", **kwargs).images


def as_uint8(images):
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def count_denoiser_calls(pipe):
    """Batch sizes of every denoiser call from now on."""
    calls = []
    family_of(pipe).denoiser(pipe).register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    return calls


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_enabled_call_equals_sharpen_at_one_evaluation_per_step(pipe):
    sharp = random_sharpener(pipe)
    kwargs = sharpen(pipe, sharp, P, negative_prompt=NEG, alpha=0.7, num_images_per_prompt=2)
    four = (0, 1, 2, 3)
    expected = run(pipe, **kwargs, guidance_scale=1.0, seeds=four)
    unguided = run(pipe, P, num_images_per_prompt=2, guidance_scale=1.0, seeds=four)

    assert enable_dice(pipe, sharp, alpha=0.7) is pipe
    calls = count_denoiser_calls(pipe)
    got = run(pipe, P, negative_prompt=NEG, num_images_per_prompt=2, seeds=four)  # default guidance_scale
    assert got.shape[0] == 4 and np.array_equal(got, expected)
    assert calls == [4] * STEPS  # one evaluation per step: no CFG batch of 2 x 4
    assert not np.array_equal(got, unguided)
    one = sharpen(pipe, sharp, P[0], alpha=0.7)
    assert np.array_equal(run(pipe, P[0], seeds=(5,)), run(pipe, **one, seeds=(5,)))  # a positional prompt


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_disable_restores_the_stock_pipeline_exactly(pipe):
    stock_class, fam = type(pipe), family_of(pipe)
    negs = [NEG] * len(P)  # the stock SD pipeline wants a list of negatives for a list of prompts
    before = run(pipe, P, negative_prompt=negs)  # the stock default guidance: CFG
    stock_attrs = set(pipe.__dict__)  # after a call: the stock call sets attributes of its own
    enable_dice(pipe, random_sharpener(pipe))
    assert isinstance(pipe, stock_class) and type(pipe).__name__ == stock_class.__name__
    assert family_of(pipe) is fam
    dice = run(pipe, P, negative_prompt=negs)
    enable_dice(pipe, random_sharpener(pipe, seed=1))  # enabling again replaces, never stacks
    assert type(pipe).__mro__.count(stock_class) == 1

    assert disable_dice(pipe) is pipe
    assert type(pipe) is stock_class and set(pipe.__dict__) == stock_attrs
    after = run(pipe, P, negative_prompt=negs)
    assert np.array_equal(before, after) and not np.array_equal(before, dice)
    assert disable_dice(pipe) is pipe and type(pipe) is stock_class  # disabling twice is harmless


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_alpha_zero_is_unguided(tiny_sd_dir):
    pipe = load_pipeline(tiny_sd_dir)
    unguided = run(pipe, P, guidance_scale=1.0)
    enable_dice(pipe, random_sharpener(pipe), alpha=0.0)
    assert np.array_equal(run(pipe, P, negative_prompt=NEG), unguided)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_guidance_above_one_and_unsharpened_text_arguments_are_refused(tiny_sd_dir, tiny_sdxl_dir):
    pipe = load_pipeline(tiny_sd_dir)
    sharp = random_sharpener(pipe)
    enable_dice(pipe, sharp)
    with pytest.raises(DiceError, match=r"guidance_scale=7.5: .* disable_dice\(pipe\)"):
        run(pipe, P, guidance_scale=7.5)
    assert np.array_equal(run(pipe, P, guidance_scale=1.0), run(pipe, P))
    embeds = sharpen(pipe, sharp, P)["prompt_embeds"]
    with pytest.raises(DiceError, match="does not take prompt_embeds next to it"):
        run(pipe, P, prompt_embeds=embeds)
    with pytest.raises(DiceError, match="clip_skip"):
        run(pipe, P, clip_skip=2)
    sdxl = load_pipeline(tiny_sdxl_dir)
    enable_dice(sdxl, random_sharpener(sdxl))
    with pytest.raises(DiceError, match="negative_prompt_2"):
        run(sdxl, P, negative_prompt_2="a cat")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_embeddings_run_as_given_so_every_generate_method_works(tiny_sd_dir):
    pipe = load_pipeline(tiny_sd_dir)
    sharp = random_sharpener(pipe)

    def images(method):
        out = generate(pipe, P, method=method, sharpener=sharp, num_inference_steps=STEPS, progress=False)
        return np.stack([s.image for s in out])

    stock = {m: images(m) for m in ("unguided", "cfg", "dice")}
    enable_dice(pipe, sharp)
    for method, expected in stock.items():
        assert np.array_equal(images(method), expected), method


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_a_sharpener_for_another_family_is_refused_and_nothing_changes(tiny_sd_dir, tiny_pixart_dir):
    pipe = load_pipeline(tiny_sd_dir)
    stock_class = type(pipe)
    with pytest.raises(SharpenerMismatchError, match="'pixart' family but the pipeline is 'sd'"):
        enable_dice(pipe, random_sharpener(load_pipeline(tiny_pixart_dir)))
    assert type(pipe) is stock_class and "_dice_settings" not in pipe.__dict__


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_an_enabled_pipeline_saves_as_the_stock_one(tiny_sd_dir, tmp_path):
    pipe = enable_dice(load_pipeline(tiny_sd_dir), random_sharpener(load_pipeline(tiny_sd_dir)))
    pipe.save_pretrained(tmp_path / "saved")
    index = (tmp_path / "saved" / "model_index.json").read_text()
    assert '"_class_name": "StableDiffusionPipeline"' in index
    assert type(load_pipeline(tmp_path / "saved")).__name__ == "StableDiffusionPipeline"


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_wrong_types_are_dice_errors(tiny_sd):
    from dicecfg import DiceError, disable_dice, enable_dice

    sharp = random_sharpener(tiny_sd)
    with pytest.raises(DiceError, match="needs a Sharpener"):
        enable_dice(tiny_sd, "mini")
    with pytest.raises(DiceError, match="alpha must be a number"):
        enable_dice(tiny_sd, sharp, alpha="1")
    with pytest.raises(DiceError, match="needs a pipeline"):
        disable_dice(None)
    enable_dice(tiny_sd, sharp)
    try:
        with pytest.raises(DiceError, match="prompt must be a text"):
            tiny_sd(5, num_inference_steps=1)
        with pytest.raises(DiceError, match="negative_prompt must be a text"):
            tiny_sd("a red circle", negative_prompt=5, num_inference_steps=1)
        for bad in (0, -1, 1.5):  # no silent switch to one image, and no raw torch error either
            with pytest.raises(DiceError, match=r"num_images_per_prompt must be a whole number >= 1"):
                tiny_sd("a red circle", num_images_per_prompt=bad, num_inference_steps=1)
        for scale in (float("nan"), float("inf"), "5"):
            with pytest.raises(DiceError, match="guidance_scale must be a finite number or left out"):
                tiny_sd("a red circle", guidance_scale=scale, num_inference_steps=1)
    finally:
        disable_dice(tiny_sd)


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_an_enabled_pipeline_pickles_and_stays_enabled(tiny_sd_dir):
    import pickle

    from dicecfg.sampling.enable import dice_enabled

    pipe = load_pipeline(tiny_sd_dir)
    sharp = random_sharpener(pipe)
    enable_dice(pipe, sharp, alpha=0.7)
    copy = pickle.loads(pickle.dumps(pipe))  # a PicklingError before: the enabled class is made at run time
    assert dice_enabled(copy) and type(copy) is type(pipe) and copy._dice_settings.alpha == 0.7
    assert np.array_equal(run(copy, P, negative_prompt=NEG), run(pipe, P, negative_prompt=NEG))
    disable_dice(copy)
    assert type(copy) is type(disable_dice(pipe)) and not dice_enabled(copy)


def test_an_enabled_pipeline_and_sharpen_use_the_recorded_settings_as_dice_does(pipe):
    """One default for "DICE with this sharpener": enable_dice(pipe, sharp), pipe(**sharpen(...)) and
    generate(method=Dice(sharp)) give the same images when the sharpener records an interval (the edit on step 0
    of 2 only) and its own settings for images with a negative prompt."""
    sharp = random_sharpener(pipe)
    sharp.config["sampling"] = {"alpha": 1.5, "stop": 0.5, "negative": {"alpha": 0.5, "stop": 1.0}}
    negs = ["", NEG]
    want = np.stack([s.image for s in generate(pipe, P, method=Dice(sharp), seeds=[0, 1], negative_prompt=negs,
                                               num_inference_steps=STEPS, progress=False)])  # fmt: skip
    every_step = np.stack([s.image for s in generate(pipe, P, method=Dice(sharp, stop=1.0), seeds=[0, 1],
                                                     negative_prompt=negs, num_inference_steps=STEPS, progress=False)])  # fmt: skip
    assert not np.array_equal(want, every_step)  # the recorded interval matters here
    if family_of(pipe).name != "pixart":  # through callback_on_step_end, which PixArt-alpha's pipeline lacks
        assert np.array_equal(
            as_uint8(run(pipe, **sharpen(pipe, sharp, P, negative_prompt=negs), guidance_scale=1.0)), want
        )
    else:
        with pytest.raises(DiceError, match="takes no callback_on_step_end"):
            sharpen(pipe, sharp, P, negative_prompt=negs)
    enable_dice(pipe, sharp)
    assert np.array_equal(as_uint8(run(pipe, P, negative_prompt=negs)), want)
    enable_dice(pipe, sharp, stop=1.0)  # told otherwise: the edit on every step
    assert np.array_equal(as_uint8(run(pipe, P, negative_prompt=negs)), every_step)
