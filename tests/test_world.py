"""The shapes world: scenes, grammar, renderer, oracle, held-out split and dataset."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from dicecfg.world import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    RELATIONS,
    SHAPES,
    SIZES,
    VOCAB,
    Obj,
    ObjSpec,
    Oracle,
    Scene,
    Spec,
    caption_spec,
    degrade,
    frechet_distance,
    heldout_set,
    is_heldout,
    make_dataset,
    parse,
    render,
    sample_scene,
    sample_training_scenes,
    spec_of,
    validate_scene,
)
from dicecfg.world import data as world_data
from dicecfg.world import oracle as world_oracle
from dicecfg.world.scenes import INVERSE_RELATION


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = np.random.default_rng(0)
    return [sample_scene(rng) for _ in range(2000)]


@pytest.fixture(scope="module")
def heldout_renders():
    items = heldout_set()
    return items, render([it.scene for it in items])


def test_sampled_scenes_are_valid_and_mixed(scenes):
    for s in scenes:
        validate_scene(s)
    singles = np.mean([len(s.objects) == 1 for s in scenes])
    assert 0.25 < singles < 0.35
    assert {s.relation for s in scenes if s.relation} == set(RELATIONS)
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {s.background for s in scenes} == set(BACKGROUNDS)


def test_validate_scene_rejects_broken_scenes():
    a = Obj("circle", "red", "small", 0.3, 0.5)
    b = Obj("square", "blue", "small", 0.7, 0.5)
    validate_scene(Scene((a, b), "white", "left of"))
    with pytest.raises(ValueError, match="relation"):
        validate_scene(Scene((a, b), "white", "right of"))
    with pytest.raises(ValueError, match="overlap"):
        validate_scene(Scene((a, dataclasses.replace(b, x=0.35)), "white", "left of"))
    with pytest.raises(ValueError, match="distinct colours"):
        validate_scene(Scene((a, dataclasses.replace(b, colour="red")), "white", "left of"))


def test_caption_parse_round_trip(scenes):
    rng = np.random.default_rng(1)
    seen_words = set()
    for s in scenes:
        text, spec = caption_spec(s, rng)
        assert parse(text) == spec, text
        seen_words |= set(text.split())
        # every stated attribute is true of the scene
        objs = (
            s.objects
            if len(s.objects) == 1 or spec.objects[0].colour == s.objects[0].colour
            else s.objects[::-1]
        )
        for o, os_ in zip(objs, spec.objects, strict=True):
            assert (os_.shape, os_.colour) == (o.shape, o.colour) and os_.size in (None, o.size)
    assert seen_words == set(VOCAB)
    assert len(VOCAB) < 60


def test_parse_accepts_partial_prompts_and_explains_errors():
    assert parse("A circle above a big square.") == Spec(
        (ObjSpec("circle", None, None), ObjSpec("square", None, "large")), "above", None
    )
    with pytest.raises(ValueError, match=r"expected a shape .* found 'blob' \(word 3\)"):
        parse("a red blob")
    with pytest.raises(ValueError, match="found 'next'"):
        parse("a red circle next to a blue square")
    with pytest.raises(ValueError, match="background colour"):
        parse("a red circle on a pink background")
    with pytest.raises(ValueError, match="found the end"):
        parse("a red circle is")
    with pytest.raises(ValueError, match="'a' or 'an'"):
        parse("")


def test_render_shape_colours_and_speed(scenes):
    t = time.perf_counter()
    images = render(scenes)
    rate = len(scenes) / (time.perf_counter() - t)
    assert images.shape == (len(scenes), 64, 64, 3) and images.dtype == np.uint8
    for s, im in zip(scenes[:200], images[:200], strict=True):
        assert tuple(im[0, 0]) == BACKGROUND_RGB[s.background]
        o = s.objects[0]
        assert tuple(im[int(o.y * 64), int(o.x * 64)]) == COLOUR_RGB[o.colour]
    assert rate > 1000, f"render ran at {rate:.0f} images/s"  # ~8,000/s on an idle core


def test_oracle_is_right_on_heldout_renders(heldout_renders):
    items, images = heldout_renders
    specs = [it.spec for it in items]
    clean = Oracle().score(images, specs)
    assert set(clean) == set(Oracle.keys)
    assert clean["all"].mean() >= 0.99
    noisy = Oracle().score(degrade(images, blur=0.7, noise=0.05, seed=0), specs)
    assert noisy["all"].mean() >= 0.97


def test_oracle_accepts_float_chw_and_torch(heldout_renders):
    items, images = heldout_renders
    specs = [it.spec for it in items[:64]]
    as_float = torch.from_numpy(images[:64]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ref = Oracle().score(images[:64], specs)
    for other in (as_float, as_float.numpy()):
        got = Oracle().score(other, specs)
        assert all(np.array_equal(ref[k], got[k]) for k in ref)


def _wrong_specs(spec: Spec) -> list[Spec]:
    o0 = spec.objects[0]
    stated = {o.colour for o in spec.objects}
    wrong = [
        dataclasses.replace(
            spec,
            objects=(
                dataclasses.replace(o0, colour=next(c for c in COLOURS if c not in stated)),
                *spec.objects[1:],
            ),
        ),
        dataclasses.replace(
            spec,
            objects=(
                dataclasses.replace(o0, shape=next(s for s in SHAPES if s != o0.shape)),
                *spec.objects[1:],
            ),
        ),
        dataclasses.replace(spec, background=next(b for b in BACKGROUNDS if b != spec.background)),
    ]
    if o0.size is not None:
        wrong.append(
            dataclasses.replace(
                spec,
                objects=(
                    dataclasses.replace(o0, size=next(z for z in SIZES if z != o0.size)),
                    *spec.objects[1:],
                ),
            )
        )
    if spec.relation is not None:
        wrong.append(dataclasses.replace(spec, relation=INVERSE_RELATION[spec.relation]))
        wrong.append(Spec(spec.objects[:1], None, spec.background))  # wrong count
    else:
        extra = ObjSpec(None, None, None)
        wrong.append(Spec((o0, extra), "left of", spec.background))
    return wrong


def test_oracle_rejects_wrong_specs(heldout_renders):
    items, images = heldout_renders
    rows, specs = [], []
    for i, it in enumerate(items[:200]):
        full = spec_of(it.scene)
        for w in _wrong_specs(full):
            rows.append(i)
            specs.append(w)
    scores = Oracle().score(images[rows], specs)
    assert scores["all"].mean() <= 0.01
    assert Oracle().score(images[:200], [spec_of(it.scene) for it in items[:200]])["all"].mean() >= 0.99


def test_shape_prototypes_match_clean_renders():
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, max_objects=1) for _ in range(400)]
    dets, _ = Oracle().detect(render(scenes))
    assert [d[0].shape for d in dets] == [s.objects[0].shape for s in scenes]
    assert [d[0].size for d in dets] == [s.objects[0].size for s in scenes]
    assert world_oracle._PROTOTYPES.shape == (len(SHAPES), 5)


def test_heldout_set_is_bounded_by_its_size():
    from dicecfg.world.heldout import HELDOUT_SIZE

    started = time.perf_counter()
    for n in (HELDOUT_SIZE + 1, 10**9):  # n = 10**9 used to build a billion items, silently, without bound
        with pytest.raises(ValueError, match=f"held-out set has {HELDOUT_SIZE} prompts"):
            heldout_set(n)
    assert time.perf_counter() - started < 1.0
    assert len(heldout_set(HELDOUT_SIZE)) == HELDOUT_SIZE  # the whole set


def test_heldout_set_is_fixed_and_disjoint_from_training():
    a, b = heldout_set(), heldout_set()
    assert a == b and len(a) == 512
    assert heldout_set(100) == a[:100]
    assert len({it.seed for it in a}) == len(a)
    assert all(is_heldout(it.scene) and is_heldout(it.spec) for it in a)
    assert a[0].prompt == "an orange circle below a blue triangle"  # pinned: the same on every machine
    scenes, captions = sample_training_scenes(3000, seed=7)
    assert not any(is_heldout(s) for s in scenes)
    # two-object captions always state the whole pair identity, so the caption alone must be clean too
    assert not any(is_heldout(parse(c)) for c in captions if parse(c).relation is not None)
    # the same combination mentioned the other way round is still held out
    pair = next(it.scene for it in a if it.scene.relation)
    flipped = Scene(pair.objects[::-1], pair.background, INVERSE_RELATION[pair.relation])
    assert is_heldout(flipped)


def test_validation_set_is_fixed_and_apart_from_heldout_and_training():
    from dicecfg.world import validation_set

    v = validation_set()
    assert v == validation_set() and validation_set(600)[:512] == v and len(v) == 512
    assert not any(is_heldout(it.scene) for it in v)  # never a held-out combination (as in training)
    seeds = {it.seed for it in v}
    assert len(seeds) == len(v) and not seeds & {it.seed for it in heldout_set()}
    assert all(parse(it.prompt) == it.spec for it in v)  # each prompt says what its spec says
    _, training = sample_training_scenes(512, seed=21)  # the shipped sharpener's training captions start so
    assert [it.prompt for it in v] != training
    assert sum(len(it.scene.objects) == 2 for it in v) > 256  # both kinds of scene, mostly pairs


def test_make_dataset_is_deterministic_for_any_worker_count(monkeypatch):
    monkeypatch.setattr(world_data, "CHUNK", 128)
    images, captions = make_dataset(300, seed=5)
    again, captions_again = make_dataset(300, seed=5)
    pooled, captions_pooled = make_dataset(300, seed=5, workers=2)
    assert images.shape == (300, 64, 64, 3) and images.dtype == np.uint8 and len(captions) == 300
    assert np.array_equal(images, again) and captions == captions_again
    assert np.array_equal(images, pooled) and captions == captions_pooled
    assert make_dataset(300, seed=6)[1] != captions
    first_scenes, first_captions = sample_training_scenes(128, seed=5, chunk=0)
    assert captions[:128] == first_captions and np.array_equal(images[:128], render(first_scenes))


def test_render_into_writes_make_datasets_images_in_place(monkeypatch, tmp_path):
    """`render_into` (the mini model's data stage: workers write their chunks into one .npy) gives exactly
    `make_dataset`'s images and captions, with one pool for several files and without a pool."""
    monkeypatch.setattr(world_data, "CHUNK", 128)
    images, captions = make_dataset(300, seed=5)
    pool = world_data.render_pool(2)
    try:
        pooled = world_data.render_into(tmp_path / "a.npy", 300, 5, pool=pool)
        other = world_data.render_into(tmp_path / "b.npy", 130, 6, pool=pool)  # the same pool, a second file
    finally:
        pool.close()
        pool.join()
    alone = world_data.render_into(tmp_path / "c.npy", 300, 5)
    assert pooled == captions == alone
    assert np.array_equal(np.load(tmp_path / "a.npy"), images) and np.array_equal(
        np.load(tmp_path / "c.npy"), images
    )
    expected, expected_captions = make_dataset(130, seed=6)
    assert other == expected_captions and np.array_equal(np.load(tmp_path / "b.npy"), expected)
    assert world_data.render_pool(1) is None


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)
    # 1-D Gaussians: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    x, y = rng.normal(size=(20000, 1)), 2.0 * rng.normal(size=(20000, 1))
    assert frechet_distance(x, y) == pytest.approx(1.0, abs=0.1)


def test_oracle_features_are_deterministic_and_informative(heldout_renders):
    _, images = heldout_renders
    f = Oracle().features(images[:200])
    assert f.shape == (200, 116) and np.isfinite(f).all()
    assert np.array_equal(f, Oracle().features(images[:200]))
    other = Oracle().features(images[200:400])
    blurred = Oracle().features(degrade(images[200:400], blur=1.5, noise=0.1))
    assert frechet_distance(f, other) < frechet_distance(f, blurred)
