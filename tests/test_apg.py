"""Adaptive Projected Guidance (sampling/apg.py): its formula on known vectors, CFG as its eta=1 case, its
interval and NFE through the step guide, and its place in the registry (spelling, help, export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dicecfg
from dicecfg import CFG, generate
from dicecfg.errors import InputError
from dicecfg.families import family_of
from dicecfg.sampling.apg import APG, ProjectedGuide
from dicecfg.sampling.spelling import parse_method, spelling_help
from dicecfg.sampling.steps import Predictions, Step

P = ["a red circle", "a large blue square"]


def images(pipe, method, steps=6):
    out = list(generate(pipe, P, method=method, seeds=[3, 4], num_inference_steps=steps, progress=False))
    return np.stack([s.image for s in out]).astype(int), [s.nfe for s in out]


def combined(method, cond, uncond):
    x = torch.zeros_like(cond)
    return ProjectedGuide(method).combine(
        Step(0, 1, 999.0), Predictions(torch.arange(len(cond)), x, cond, uncond)
    )


def test_the_update_is_split_along_the_conditional_prediction():
    cond = torch.zeros(2, 4, 2, 2)
    cond[:, 0] = 1.0  # c points along channel 0
    along, across = torch.zeros_like(cond), torch.zeros_like(cond)
    along[:, 0], across[:, 1] = 0.5, 0.5
    w = 3.0
    # an update parallel to c is dropped at eta=0 and kept at eta=1; an orthogonal one always acts, times w - 1
    assert torch.allclose(combined(APG(w, eta=0.0, rescale=0.0), cond, cond - along), cond)
    assert torch.allclose(combined(APG(w, eta=1.0, rescale=0.0), cond, cond - along), cond + (w - 1) * along)
    assert torch.allclose(
        combined(APG(w, eta=0.0, rescale=0.0), cond, cond - across), cond + (w - 1) * across
    )
    # rescaling bounds the update's norm (here 2 * 0.5 = 1 per image) by r
    got = combined(APG(w, eta=1.0, rescale=0.25), cond, cond - across)
    assert torch.allclose((got - cond).flatten(1).norm(dim=1), torch.full((2,), (w - 1) * 0.25))


def test_momentum_carries_the_update_across_guided_steps():
    cond, uncond = torch.randn(1, 4, 2, 2, dtype=torch.float64), torch.randn(1, 4, 2, 2, dtype=torch.float64)
    guide = ProjectedGuide(APG(2.0, eta=1.0, rescale=0.0, momentum=-0.5))
    p = Predictions(torch.arange(1), torch.zeros_like(cond), cond, uncond)
    first, second = guide.combine(Step(0, 2, 999.0), p), guide.combine(Step(1, 2, 500.0), p)
    d = cond - uncond
    assert torch.allclose(first, cond + d) and torch.allclose(second, cond + (d - 0.5 * d))


def test_apg_at_eta_one_is_cfg_and_its_interval_and_nfe_hold(tiny_sd):
    cfg, cfg_nfe = images(tiny_sd, CFG(5.0, stop=0.5))
    same, nfe = images(tiny_sd, APG(5.0, eta=1.0, rescale=0.0, stop=0.5))
    assert nfe == cfg_nfe == [APG(stop=0.5).nfe(6)] * 2 == [9, 9]
    assert np.abs(same - cfg).max() <= 1  # the same formula, computed in float64: rounding only
    rows = []
    hook = family_of(tiny_sd).denoiser(tiny_sd).register_forward_hook(lambda m, a, o: rows.append(len(a[0])))
    try:
        apg, nfe = images(tiny_sd, APG(5.0))
    finally:
        hook.remove()
    assert sum(rows) == sum(nfe) == 2 * 2 * 6
    full_cfg, unguided = images(tiny_sd, CFG(5.0))[0], images(tiny_sd, "unguided")[0]
    assert not np.array_equal(apg, full_cfg) and not np.array_equal(
        apg, unguided
    )  # the parallel part dropped
    bounded, _ = images(tiny_sd, APG(5.0, eta=1.0, rescale=1e-6))  # an update of norm ~0: the prompt alone
    assert np.abs(bounded - unguided).max() <= 1 < np.abs(full_cfg - unguided).max()


def test_apg_is_spelled_listed_and_exported_from_the_registry():
    cls, settings = parse_method("apg:w=7,eta=0.5,r=10,stop=0.2")
    assert cls is APG and cls.create(settings) == APG(7.0, eta=0.5, rescale=10.0, stop=0.2)
    assert parse_method(APG(7.0, momentum=-0.5).spec)[1] == {"guidance_scale": 7.0, "momentum": -0.5}
    assert "apg[:w=5,eta=0,r=15,momentum=0,start=0,stop=1]" in spelling_help()
    assert dicecfg.APG is APG and "APG" in dicecfg.__all__
    with pytest.raises(InputError, match="momentum must lie in"):
        APG(momentum=1.0)
    with pytest.raises(InputError, match="below 1"):
        APG(0.5)
