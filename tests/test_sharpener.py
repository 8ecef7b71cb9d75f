import json

import pytest
import torch

from dicecfg import Sharpener, sharpen
from dicecfg.errors import SharpenerLoadError, SharpenerMismatchError


def _trained(dim=32, seed=0):
    torch.manual_seed(seed)
    s = Sharpener(dim, inner_dim=64, heads=4, base_model="tiny", train_steps=7)
    for p in s.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return s


def test_paper_parameter_counts():
    counts = {d: sum(p.numel() for p in Sharpener(d).parameters()) for d in (768, 2048, 4096)}
    assert 1.7e6 < counts[768] < 1.9e6 and 3.1e6 < counts[2048] < 3.3e6 and 5.2e6 < counts[4096] < 5.4e6


def test_untrained_edit_is_zero():
    s = Sharpener(32, inner_dim=64, heads=4)
    c, cn = torch.randn(2, 77, 32), torch.randn(1, 77, 32)
    assert torch.equal(s.edit(c, cn), c)


def test_save_load_roundtrip_is_exact(tmp_path):
    s = _trained()
    s.save_pretrained(tmp_path / "sh")
    cfg = json.loads((tmp_path / "sh" / "config.json").read_text())
    assert cfg["dim"] == 32 and cfg["family"] == "sd" and cfg["train_steps"] == 7 and "dicecfg_version" in cfg
    loaded = Sharpener.from_pretrained(tmp_path / "sh")
    for (k, a), (_, b) in zip(s.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    c, cn = torch.randn(3, 77, 32), torch.randn(1, 77, 32)
    assert torch.equal(s(c, cn), loaded(c, cn))
    assert loaded.config == s.config


def test_first_token_unchanged_and_negative_changes_edit():
    s = _trained()
    c = torch.randn(2, 77, 32)
    out1 = s.edit(c, torch.randn(1, 77, 32))
    out2 = s.edit(c, torch.randn(1, 77, 32))
    assert torch.equal(out1[:, 0], c[:, 0])
    assert not torch.allclose(out1[:, 1:], c[:, 1:])
    assert not torch.allclose(out1, out2)


def test_wrong_dim_for_pipeline_names_both(tiny_sd):
    s = Sharpener(48, inner_dim=64, heads=4)
    with pytest.raises(SharpenerMismatchError, match=r"48.*32"):
        sharpen(tiny_sd, s, "a red circle")


def test_wrong_family_refused(tiny_sd):
    s = Sharpener(32, inner_dim=64, heads=4, family="pixart")
    with pytest.raises(SharpenerMismatchError, match="pixart"):
        sharpen(tiny_sd, s, "a red circle")


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(SharpenerLoadError, match="does not exist"):
        Sharpener.from_pretrained(tmp_path / "nope")
    s = _trained()
    s.save_pretrained(tmp_path / "sh")
    weights = tmp_path / "sh" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(SharpenerLoadError, match="truncated or corrupt"):
        Sharpener.from_pretrained(tmp_path / "sh")
    with pytest.raises(SharpenerLoadError, match="is a file"):
        Sharpener.from_pretrained(weights)
    # weights of another dim behind a config that says 32
    Sharpener(48, inner_dim=64, heads=4).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "sh" / "config.json").read_text())
    with pytest.raises(SharpenerLoadError, match="shape"):
        Sharpener.from_pretrained(tmp_path / "other")
