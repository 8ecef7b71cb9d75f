"""The fixtures the tests share: tiny random pipelines built once per session and saved to disk, the prompts, a
cheap torch.compile. Helpers that tests import are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import PROMPTS, build_tiny_pixart, build_tiny_sd, build_tiny_sdxl


def pytest_collection_modifyitems(config, items):
    """`slow` tests (real weights, long runs) are skipped unless the -m expression names them (`-m slow`), so
    the tiers' own -m (`-m "not integration"`) does not switch them on."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sd_v_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd_v"), prediction_type="v_prediction", seed=1)


@pytest.fixture()
def tiny_sd(tiny_sd_dir):
    from dicecfg import load_pipeline

    return load_pipeline(tiny_sd_dir)


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return list(PROMPTS)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


@pytest.fixture(scope="session")
def tiny_pixart_dir(tmp_path_factory) -> Path:
    return build_tiny_pixart(tmp_path_factory.mktemp("tiny_pixart"))


@pytest.fixture
def cheap_compile(monkeypatch):
    """torch.compile with the "eager" backend: Dynamo traces the denoiser as Inductor would be given it, without
    generating kernels (seconds instead of a minute on CPU)."""
    from dicecfg.sampling import fast as fastmod

    torch._dynamo.reset()
    made = []

    def compile_forward(forward, mode):
        made.append(mode)
        return torch.compile(forward, backend="eager", dynamic=False)

    monkeypatch.setattr(fastmod, "compile_forward", compile_forward)
    yield made
    torch._dynamo.reset()
