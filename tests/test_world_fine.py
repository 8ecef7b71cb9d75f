"""The shapes-fine world: scenes with patterns and dots, grammar, renderer, held-out split, oracle, dataset."""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest
import torch
from helpers import bench_script

from dicecfg.world import data as world_data
from dicecfg.world import degrade, frechet_distance, make_dataset, sample_training_scenes
from dicecfg.world.fine import (
    DOT_COUNTS,
    PATTERNS,
    VOCAB,
    FineObj,
    FineObjSpec,
    FineScene,
    FineSpec,
    caption_spec,
    heldout_set,
    is_heldout,
    parse,
    render,
    sample_scene,
    spec_of,
    validate_scene,
    validation_set,
)
from dicecfg.world.fine.heldout import HELDOUT_SIZE
from dicecfg.world.fine.oracle import N_FEATURES, FineOracle, prototypes
from dicecfg.world.fine.scenes import DOT_RGB
from dicecfg.world.scenes import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    INVERSE_RELATION,
    RELATIONS,
    SHAPES,
    SIZES,
)
from dicecfg.world.worlds import get_world


@pytest.fixture(scope="module")
def scenes() -> list[FineScene]:
    rng = np.random.default_rng(0)
    return [sample_scene(rng) for _ in range(2000)]


@pytest.fixture(scope="module")
def heldout_renders():
    items = heldout_set()
    return items, render([it.scene for it in items])


def test_sampled_scenes_are_valid_and_mixed(scenes):
    for s in scenes:
        validate_scene(s)
    assert 0.25 < np.mean([len(s.objects) == 1 for s in scenes]) < 0.35
    assert 0.15 < np.mean([not s.dots for s in scenes]) < 0.25
    assert {len(s.dots) for s in scenes} == set(DOT_COUNTS)
    assert {o.pattern for s in scenes for o in s.objects} == set(PATTERNS)
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.size for s in scenes for o in s.objects} == set(SIZES)
    assert {s.relation for s in scenes if s.relation} == set(RELATIONS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)


def test_validate_scene_rejects_broken_scenes():
    a = FineObj("circle", "red", "small", "hollow", 0.25, 0.5)
    b = FineObj("square", "blue", "small", "solid", 0.75, 0.5)
    good = FineScene((a, b), "white", "left of", ((0.5, 0.1),))
    validate_scene(good)
    broken = {
        "relation": dataclasses.replace(good, relation="right of"),
        "overlap": dataclasses.replace(good, objects=(a, dataclasses.replace(b, x=0.3))),
        "distinct colours": dataclasses.replace(good, objects=(a, dataclasses.replace(b, colour="red"))),
        "unknown attribute": dataclasses.replace(good, objects=(a, dataclasses.replace(b, pattern="dotted"))),
        "touches an object": dataclasses.replace(good, dots=((0.25, 0.5),)),
        "too close to the border": dataclasses.replace(good, dots=((0.5, 0.01),)),
        "at most 4 dots": dataclasses.replace(good, dots=((0.5, 0.1),) * 5),
    }
    for message, scene in broken.items():
        with pytest.raises(ValueError, match=message):
            validate_scene(scene)


def test_caption_parse_round_trip(scenes):
    rng = np.random.default_rng(1)
    seen_words: set[str] = set()
    for s in scenes + scenes:  # two paraphrases of each
        text, spec = caption_spec(s, rng)
        assert parse(text) == spec, text
        seen_words |= set(text.split())
        assert spec.dots in (None, len(s.dots)) and spec.background in (None, s.background)
        objs = s.objects if spec.objects[0].colour == s.objects[0].colour else s.objects[::-1]
        for o, os_ in zip(objs, spec.objects, strict=True):
            assert (os_.shape, os_.colour) == (o.shape, o.colour)
            assert os_.size in (None, o.size) and os_.pattern in (None, o.pattern)
    assert seen_words == set(VOCAB)


def test_parse_accepts_partial_prompts_and_names_the_word_that_does_not_fit():
    assert parse("A hollow circle above a big square with vertical stripes and no dots.") == FineSpec(
        (
            FineObjSpec("circle", None, None, "hollow"),
            FineObjSpec("square", None, "large", "vertical stripes"),
        ),
        "above",
        None,
        0,
    )
    assert parse("an outlined red cross on gray and one dot").objects[0].pattern == "hollow"
    errors = {
        "a red circle with diagonal stripes": r"'horizontal stripes' or 'vertical stripes', found 'diagonal' \(word 5\)",
        "a solid red circle with vertical stripes": "one pattern per object",
        "a red circle and five dots": r"number of dots .* found 'five' \(word 5\)",
        "a red circle and two dot": r"expected 'dots', found 'dot' \(word 6\)",
        "a red circle and one dots": r"expected 'dot', found 'dots'",
        "a striped red circle": r"expected a shape .* found 'striped' \(word 2\)",
        "a red circle and": "found the end",
    }
    for text, message in errors.items():
        with pytest.raises(ValueError, match=message):
            parse(text)


def test_render_shape_colours_and_speed(scenes):
    started = time.perf_counter()
    images = render(scenes)
    rate = len(scenes) / (time.perf_counter() - started)
    assert images.shape == (len(scenes), 64, 64, 3) and images.dtype == np.uint8
    for s, im in zip(scenes[:300], images[:300], strict=True):
        assert tuple(im[0, 0]) == BACKGROUND_RGB[s.background]
        for x, y in s.dots:
            assert tuple(im[int(y * 64), int(x * 64)]) == DOT_RGB[s.background]
        for o in s.objects:  # a solid object's centre, a horizontally striped one's centre row are its colour
            if o.pattern in ("solid", "horizontal stripes", "vertical stripes"):
                assert tuple(im[int(o.y * 64), int(o.x * 64)]) == COLOUR_RGB[o.colour]
    assert rate > 1000, f"render ran at {rate:.0f} images/s"


def test_heldout_set_is_fixed_bounded_and_states_the_fine_attributes():
    a = heldout_set()
    assert a == heldout_set() and len(a) == HELDOUT_SIZE and heldout_set(100) == a[:100]
    assert len({it.seed for it in a}) == len(a)
    assert all(is_heldout(it.scene) and is_heldout(it.spec) for it in a)
    assert all(parse(it.prompt) == it.spec == dataclasses.replace(it.spec) for it in a)
    assert all(it.spec.dots == len(it.scene.dots) and 1 <= it.spec.dots <= 4 for it in a)
    assert all(o.pattern is not None for it in a for o in it.spec.objects)
    assert {o.pattern for it in a for o in it.scene.objects} == set(PATTERNS)
    started = time.perf_counter()
    for n in (HELDOUT_SIZE + 1, 10**9):
        with pytest.raises(ValueError, match=f"held-out set has {HELDOUT_SIZE} prompts"):
            heldout_set(n)
    assert time.perf_counter() - started < 1.0


def test_training_never_shows_a_heldout_combination():
    scenes, captions = sample_training_scenes(3000, seed=7, world="shapes-fine")
    assert not any(is_heldout(s) for s in scenes)
    specs = [parse(c) for c in captions]
    assert not any(is_heldout(sp) for sp in specs if sp.relation is not None)  # pair captions name the pair
    pair = next(it.scene for it in heldout_set() if it.scene.relation)
    flipped = dataclasses.replace(pair, objects=pair.objects[::-1], relation=INVERSE_RELATION[pair.relation])
    assert is_heldout(flipped)  # the same combination said the other way round is still held out


def test_export_prompts_writes_the_named_worlds_training_captions(tmp_path):
    """`export_prompts(..., world=)`: the prompts a sharpener of that world's model trains on; the default stays
    the shapes world's (the shipped sharpener's commands)."""
    world_data.export_prompts(tmp_path / "fine.txt", 300, seed=21, world="shapes-fine")
    lines = (tmp_path / "fine.txt").read_text().splitlines()
    assert lines == sample_training_scenes(300, seed=21, world="shapes-fine")[1]
    specs = [parse(line) for line in lines]  # all in this world's grammar, none of a held-out combination
    assert not any(is_heldout(sp) for sp in specs if sp.relation is not None)
    assert any(o.pattern is not None for sp in specs for o in sp.objects)  # the fine words are there
    world_data.export_prompts(tmp_path / "shapes.txt", 50, seed=21)
    assert (tmp_path / "shapes.txt").read_text().splitlines() == sample_training_scenes(50, seed=21)[1]


def test_realism_study_reuses_only_rows_of_the_same_run(tmp_path):
    """benchmarks/second_world/realism.py: a run started again with the same --json takes the rows it has
    (a cut-off run resumes; DICE rows are added beside the peers'), and refuses a file of other settings."""
    import json

    study = bench_script("second_world/realism.py")
    key = {"model": "m", "world": "shapes-fine", "n_prompts": 8}
    done = tmp_path / "r.json"
    done.write_text(json.dumps({**key, "partial": True, "rows": [{"row": "unguided", "all": 0.5}]}))
    study.resume(str(done), key)
    assert study.row("unguided", None, None, None, [], 1, None)["all"] == 0.5  # reused: nothing sampled
    assert study.PARTIAL["rows"][-1]["row"] == "unguided"
    study.resume(str(tmp_path / "none.json"), key)  # no file yet: a fresh run
    with pytest.raises(SystemExit, match="other settings"):
        study.resume(str(done), {**key, "n_prompts": 16})


def test_realism_rows_option_samples_only_the_named_peers_and_every_dice_row(tmp_path):
    """realism.py --rows: a peer row not named is neither sampled nor reported; DICE rows always are; the
    acceptance criteria, which need every row, are measured only for a whole study."""
    study = bench_script("second_world/realism.py")
    study.ONLY.update({"unguided", "cfg w=5"})
    study.DONE.update({n: {"row": n, "all": 0.5} for n in ("unguided", "dice s (alpha=1)")})
    assert study.row("first 2 steps", None, None, None, [], 1, None) is None  # would fail if it sampled
    assert study.row("unguided", None, None, None, [], 1, None)["all"] == 0.5
    assert study.row("dice s (alpha=1)", None, None, None, [], 1, None)["all"] == 0.5
    rows = [{"row": f"first {k} steps", "recovered": 0.1 * k} for k in study.PREFIX_STEPS]
    crit = study.acceptance(rows, 0.2)
    assert crit["first_10pct_recovered"] == 0.2 and crit["rule_1_first_10pct_at_most_half"]
    assert crit["steps_for_95pct"] == 10 and crit["rule_2_95pct_needs_25pct"]


def test_fd_parts_measures_each_feature_group_alone():
    """benchmarks/second_world/fd_parts.py: a shift of one group's features moves that group's FD (and the
    whole's) and leaves the others at the FD of two samples of one distribution."""
    parts = bench_script("second_world/fd_parts.py")
    for name in ("shapes", "shapes-fine"):  # the groups tile each oracle's features, none left over
        w = get_world(name)
        width = w.oracle().features(w.render([it.scene for it in w.heldout_set(2)])).shape[1]
        tiles = sorted((sl.start, sl.stop) for sl in parts.groups(width).values())
        assert tiles[0][0] == 0 and tiles[-1][1] == width and all(a[1] == b[0] for a, b in itertools.pairwise(tiles))
    rng = np.random.default_rng(0)
    ref, feats = rng.normal(size=(2000, 116)), rng.normal(size=(2000, 116))
    base = parts.parts(feats, ref)
    moved = feats.copy()
    moved[:, parts.GROUPS["histogram"]] += 0.5
    shifted = parts.parts(moved, ref)
    assert shifted["histogram"]["mean"] > 0.5**2 * 64 * 0.9 and shifted["histogram"]["fd"] > 10 * base["histogram"]["fd"]
    for g in ("colour moments", "background", "counts"):
        assert shifted[g] == base[g]
    assert shifted["all"]["fd"] > base["all"]["fd"] + 0.9 * shifted["histogram"]["mean"]


def test_realism_report_shows_each_worlds_criteria_and_refuses_a_cut_off_run(tmp_path):
    """benchmarks/second_world/report.py: the acceptance of each world in one table, each row's change per oracle
    key against unguided; a run cut off before its end is refused (it would read as a finished study)."""
    import json

    report = bench_script("second_world/report.py")
    rows = [
        {"row": "unguided", "nfe": 20.0, "all": 0.5, "se": 0.02, "pattern": 0.6, "fd": 0.1, "recovered": 0.0},
        {"row": "cfg w=5", "nfe": 40.0, "all": 0.9, "se": 0.01, "pattern": 0.95, "fd": 0.2, "recovered": 1.0},
        {"row": "first 2 steps", "nfe": 22.0, "all": 0.6, "se": 0.02, "pattern": 0.55, "fd": 0.1, "recovered": 0.25},
    ]
    criteria = {"gain": 0.4, "first_10pct_recovered": 0.25, "rule_1_first_10pct_at_most_half": True,
                "steps_for_95pct": 8, "rule_2_95pct_needs_25pct": True}  # fmt: skip
    done = {"world": "shapes-fine", "card": "X", "n_prompts": 4, "seed_sets": [0, 1], "w_star": 5.0, "steps": 20,
            "rows": rows, "criteria": criteria}  # fmt: skip
    (tmp_path / "fine.json").write_text(json.dumps(done))
    text = report.main([str(tmp_path / "fine.json")])
    assert "| shapes-fine | X | 4 x 2 | 5 | 0.500 | 0.900 | +0.400 | 0.25 | 8 of 20 | holds | holds |" in text
    assert "| first 2 steps | 22.0 | -0.050 |" in text  # pattern: 0.55 against unguided's 0.6
    (tmp_path / "cut.json").write_text(json.dumps({"partial": True, "rows": rows}))
    with pytest.raises(SystemExit, match="not finished"):
        report.main([str(tmp_path / "cut.json")])


def test_negative_prompt_probe_of_this_world_negates_one_pattern():
    """benchmarks/negative_prompts/negative_prompts.py --world shapes-fine: each prompt names a colour and a shape
    and leaves the pattern open; its negative prompt names the same object with exactly the negated pattern."""
    probe = bench_script("negative_prompts/negative_prompts.py")
    prompts, negs, negated, wanted, field, _ = probe.probe("shapes-fine", 2)
    assert field == "pattern" and len(prompts) == 2 * 5 * 7 * len(PATTERNS) and set(negated) == set(PATTERNS)
    for prompt, neg, pattern, want in zip(prompts, negs, negated, wanted, strict=True):
        (asked,), (denied,) = parse(prompt).objects, parse(neg).objects
        assert asked.pattern is None and denied.pattern == pattern
        assert (asked.shape, asked.colour) == (denied.shape, denied.colour) and None not in (asked.shape, asked.colour)
        assert want == {"colour": asked.colour, "shape": asked.shape}  # what "prompt kept" reads


def test_validation_set_is_fixed_and_apart_from_heldout_and_training():
    v = validation_set()
    assert v == validation_set() and validation_set(600)[:512] == v
    assert not any(is_heldout(it.scene) for it in v)
    seeds = {it.seed for it in v}
    assert len(seeds) == len(v) and not seeds & {it.seed for it in heldout_set()}
    assert all(parse(it.prompt) == it.spec and it.spec.dots == len(it.scene.dots) >= 1 for it in v)
    _, training = sample_training_scenes(512, seed=21, world="shapes-fine")
    assert not {it.prompt for it in v} >= set(training)


def test_oracle_is_right_on_heldout_renders(heldout_renders):
    items, images = heldout_renders
    specs = [it.spec for it in items]
    clean = FineOracle().score(images, specs)
    assert set(clean) == set(FineOracle.keys)
    for key, values in clean.items():
        assert values.mean() >= 0.995, key
    mild = FineOracle().score(degrade(images[:256], blur=0.7, noise=0.05, seed=0), specs[:256])
    assert mild["all"].mean() >= 0.98


def test_oracle_reads_every_shape_size_pattern_and_colour():
    rng = np.random.default_rng(3)
    combos = list(itertools.product(SHAPES, SIZES, PATTERNS))
    scenes = []
    for i, (shape, size, pattern) in enumerate(combos * 4):
        colour, background = COLOURS[i % len(COLOURS)], BACKGROUNDS[i % len(BACKGROUNDS)]
        obj = FineObj(shape, colour, size, pattern, 0.3 + 0.4 * rng.random(), 0.3 + 0.4 * rng.random())
        scenes.append(FineScene((obj,), background, None, ()))
    dets, dots, bgs = FineOracle().detect(render(scenes))
    got = [[(d.shape, d.colour, d.size, d.pattern) for d in ds] for ds in dets]
    assert got == [[(o.shape, o.colour, o.size, o.pattern) for o in s.objects] for s in scenes]
    assert dots == [0] * len(scenes) and bgs == [s.background for s in scenes]
    assert prototypes().shape == (3, len(SHAPES), len(SIZES), len(PATTERNS), 5)


def _wrong_specs(spec: FineSpec) -> dict[str, FineSpec]:
    """Full specs of a scene with one thing changed, and the key that must catch it."""
    o0, rest = spec.objects[0], spec.objects[1:]
    used = {o.colour for o in spec.objects}

    def first(**change) -> FineSpec:
        return dataclasses.replace(spec, objects=(dataclasses.replace(o0, **change), *rest))

    wrong = {
        "pattern": first(pattern=next(p for p in PATTERNS if p != o0.pattern)),
        "shape": first(shape=next(s for s in SHAPES if s != o0.shape)),
        "colour": first(colour=next(c for c in COLOURS if c not in used)),
        "size": first(size=next(z for z in SIZES if z != o0.size)),
        "dots": dataclasses.replace(spec, dots=(spec.dots + 1) % 5),
        "background": dataclasses.replace(
            spec, background=next(b for b in BACKGROUNDS if b != spec.background)
        ),
    }
    if spec.relation is not None:
        wrong["relation"] = dataclasses.replace(spec, relation=INVERSE_RELATION[spec.relation])
        wrong["count"] = dataclasses.replace(spec, objects=spec.objects[:1], relation=None)
        o1 = spec.objects[1]
        wrong["pattern "] = dataclasses.replace(  # the second object's pattern
            spec, objects=(o0, dataclasses.replace(o1, pattern=next(p for p in PATTERNS if p != o1.pattern)))
        )
    else:
        wrong["count"] = dataclasses.replace(
            spec, objects=(o0, FineObjSpec(None, None, None, None)), relation="left of"
        )
    return wrong


def test_oracle_rejects_wrong_specs(heldout_renders):
    items, images = heldout_renders
    rows, specs, keys = [], [], []
    for i, it in enumerate(items[:120]):
        for key, spec in _wrong_specs(spec_of(it.scene)).items():
            rows.append(i)
            specs.append(spec)
            keys.append(key.strip())
    scores = FineOracle().score(images[rows], specs)
    assert scores["all"].mean() <= 0.01
    for key in ("pattern", "dots", "background", "count"):  # the keys no reassignment of objects can fool
        caught = np.array([k == key for k in keys])
        assert scores[key][caught].mean() <= 0.01, key
    full = FineOracle().score(images[:120], [spec_of(it.scene) for it in items[:120]])
    assert full["all"].mean() >= 0.99


def test_oracle_accepts_float_chw_and_torch(heldout_renders):
    items, images = heldout_renders
    specs = [it.spec for it in items[:48]]
    as_float = torch.from_numpy(images[:48]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ref = FineOracle().score(images[:48], specs)
    for other in (as_float, as_float.numpy()):
        got = FineOracle().score(other, specs)
        assert all(np.array_equal(ref[k], got[k]) for k in ref)
    with pytest.raises(ValueError, match="images but"):
        FineOracle().score(images[:3], specs[:2])


def test_features_are_deterministic_and_see_patterns_and_dots(heldout_renders):
    items, images = heldout_renders
    f = FineOracle().features(images[:128])
    assert f.shape == (128, N_FEATURES) and np.isfinite(f).all()
    assert np.array_equal(f, FineOracle().features(images[:128]))
    same = frechet_distance(f, FineOracle().features(images[128:256]))
    scenes = [it.scene for it in items[128:256]]
    solid = [
        dataclasses.replace(s, objects=tuple(dataclasses.replace(o, pattern="solid") for o in s.objects))
        for s in scenes
    ]
    no_dots = [dataclasses.replace(s, dots=()) for s in scenes]
    assert same < frechet_distance(f, FineOracle().features(render(solid)))
    assert same < frechet_distance(f, FineOracle().features(render(no_dots)))
    assert same < frechet_distance(f, FineOracle().features(degrade(images[128:256], blur=1.5, noise=0.1)))


def test_make_dataset_is_deterministic_for_any_worker_count(monkeypatch):
    monkeypatch.setattr(world_data, "CHUNK", 128)
    images, captions = make_dataset(300, seed=5, world="shapes-fine")
    again, captions_again = make_dataset(300, seed=5, world="shapes-fine")
    pooled, captions_pooled = make_dataset(300, seed=5, workers=2, world="shapes-fine")
    assert images.shape == (300, 64, 64, 3) and images.dtype == np.uint8 and len(captions) == 300
    assert np.array_equal(images, again) and captions == captions_again
    assert np.array_equal(images, pooled) and captions == captions_pooled
    assert make_dataset(300, seed=6, world="shapes-fine")[1] != captions
    first_scenes, first_captions = sample_training_scenes(128, seed=5, chunk=0, world="shapes-fine")
    assert captions[:128] == first_captions and np.array_equal(images[:128], render(first_scenes))
    assert all(parse(c) for c in captions)


def test_unet_speed_probe_times_each_variant_and_picks_the_fastest(tmp_path):
    """benchmarks/second_world/unet_speed.py: the mini model's UNet step timed per batch size (the stage's step on
    random latents), rows written to --json, and the fastest variant by samples per second picked (512 eager when
    none ran, e.g. a probe cut off by its timeout)."""
    import json

    probe = bench_script("second_world/unet_speed.py")
    out = tmp_path / "speed.json"
    args = ["--preset", "tiny", "--device", "cpu", "--batches", "2", "4", "--compile-batches", "--warm", "1"]
    rows = probe.main([*args, "--steps", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == rows
    timed = [r for r in rows if "samples_s" in r]
    assert [r["batch"] for r in timed] == [2, 4] and all(r["samples_s"] > 0 for r in timed)
    assert rows[1]["text_ms"] > 0
    fake = [{"batch": 512, "compile": False, "samples_s": 10.0}, {"batch": 1024, "compile": True, "samples_s": 30.0},
            {"batch": 2048, "error": "OutOfMemoryError"}]
    assert probe.best(fake) == (1024, 1) and probe.best([]) == (512, 0)


def test_ship_refuses_another_worlds_model_and_a_budget_overrun_writing_nothing(tmp_path, monkeypatch):
    """benchmarks/second_world/ship.py: a pipeline of another world, or weights over the package's budget, exit 2
    and leave the assets folder as it was; within the budget the model and sharpener land, the sharpener in fp16."""
    import json

    from safetensors.torch import load_file, save_file

    ship = bench_script("second_world/ship.py")
    pipe, sharp, assets = tmp_path / "pipe", tmp_path / "sharp", tmp_path / "assets"
    for sub in ("scheduler", "text_encoder", "tokenizer", "unet", "vae"):
        (pipe / sub).mkdir(parents=True)
    save_file({"w": torch.zeros(1000, dtype=torch.float16)}, pipe / "unet" / "diffusion_pytorch_model.safetensors")
    (pipe / "model_index.json").write_text("{}")
    sharp.mkdir()
    (sharp / "config.json").write_text(json.dumps({"arch": "block"}))
    save_file({"w": torch.ones(100)}, sharp / "model.safetensors")
    (assets / "mini-sharpener").mkdir(parents=True)
    save_file({"w": torch.zeros(500)}, assets / "mini-sharpener" / "model.safetensors")
    args = ["--pipeline", str(pipe), "--sharpener", str(sharp), "--assets", str(assets)]

    def listing():
        return sorted(str(p.relative_to(assets)) for p in assets.rglob("*"))

    before = listing()
    (pipe / "dicecfg_world.json").write_text(json.dumps({"world": "shapes"}))
    assert ship.main(args) == 2 and listing() == before
    (pipe / "dicecfg_world.json").write_text(json.dumps({"world": "shapes-fine"}))
    monkeypatch.setattr(ship, "TOTAL_LIMIT", 4000)  # 2,000 bytes of the existing sharpener + 2,000 + 200 new
    assert ship.main(args) == 2 and listing() == before
    monkeypatch.setattr(ship, "TOTAL_LIMIT", 10_000)
    assert ship.main(args) == 0
    assert load_file(assets / "mini-fine-sharpener" / "model.safetensors")["w"].dtype == torch.float16
    assert (assets / "mini-fine-model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    shipped = listing()
    assert ship.main(args) == 0 and listing() == shipped  # again: the two folders replaced, nothing left over
