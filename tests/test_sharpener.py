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


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_wrong_dim_for_pipeline_names_both(tiny_sd):
    s = Sharpener(48, inner_dim=64, heads=4)
    with pytest.raises(SharpenerMismatchError, match=r"48.*32"):
        sharpen(tiny_sd, s, "a red circle")


@pytest.mark.integration  # end to end: a pipeline, a command or a process
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


def test_saved_tensor_names_of_each_network_are_fixed():
    """Sharpener folders written by earlier versions must keep loading: the variants' layers stay attributes of
    the sharpener itself, so the state dict names (and their order) are these."""
    shared = ["proj_in.weight", "proj_in.bias", "to_q.weight", "to_k.weight", "to_v.weight"]
    shared += ["attn_out.weight", "attn_out.bias"]
    block = [
        f"{n}.{p}" for n in ("norm_self", "norm_cross", "norm_kv", "norm_mlp") for p in ("weight", "bias")
    ]
    block += ["self_qkv.weight", "self_out.weight", "self_out.bias"]
    block += ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    out = ["proj_out.weight", "proj_out.bias"]
    assert list(Sharpener(32, 64, 4).state_dict()) == shared + out
    assert list(Sharpener(32, 64, 4, arch="block").state_dict()) == shared + block + out
    timed = Sharpener(32, 64, 4, arch="block", time_edges=[900.0])
    assert list(timed.state_dict()) == ["time_embed", *shared, *block, *out]


def test_only_the_hub_clients_errors_read_as_no_such_sharpener(monkeypatch):
    """A hub id that cannot be fetched is one clear line; any other error (a bug) is not disguised as one."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(
        constants, "HF_HUB_OFFLINE", False
    )  # CI sets HF_HUB_OFFLINE=1; this is the online case

    def fails_with(err):
        def snapshot_download(*args, **kwargs):
            raise err

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    fails_with(LocalEntryNotFoundError("not in the cache"))
    with pytest.raises(SharpenerLoadError, match="the hub did not give one .LocalEntryNotFoundError."):
        Sharpener.from_pretrained("some-sharpener")
    fails_with(RuntimeError("a bug of ours"))
    with pytest.raises(RuntimeError, match="a bug of ours"):
        Sharpener.from_pretrained("some-sharpener")


def test_a_hub_id_is_fetched_from_the_hub(tmp_path, monkeypatch):
    """``owner/name`` that is no local folder goes to the hub (snapshot_download of its config.json and
    model.safetensors); offline, the line says so as load_pipeline does; fetched, it loads from that folder."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    asked = {}

    def offline(repo_id, **kwargs):  # what the hub client raises with no network and nothing cached
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as e:
            raise LocalEntryNotFoundError("cannot find the requested files in the disk cache") from e

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(SharpenerLoadError) as err:
        Sharpener.from_pretrained("someone/sharpener")
    line = str(err.value)
    assert line.startswith(
        "'someone/sharpener' is neither a local folder nor reachable on the hub: no network"
    )
    assert "hf download someone/sharpener" in line and "does not exist" not in line and "\n" not in line

    saved = _trained()
    saved.save_pretrained(tmp_path / "snap")

    def fetched(repo_id, **kwargs):
        asked.update(kwargs, repo_id=repo_id)
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fetched)
    loaded = Sharpener.from_pretrained("someone/sharpener", revision="v1")
    assert asked["repo_id"] == "someone/sharpener" and asked["revision"] == "v1"
    assert set(asked["allow_patterns"]) == {"config.json", "model.safetensors"}
    for k, v in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(SharpenerLoadError, match="does not exist"):  # a path, never a hub id
        Sharpener.from_pretrained("./runs/missing")


def test_the_model_card_is_written_by_the_run_folder_stage(tmp_path):
    """The card reads a run folder's stats, so it lives with the run folders (runs/card.py); the sharpener
    module only asks for it."""
    import ast
    import inspect

    import dicecfg.sharpener as module
    from dicecfg.runs.card import card_text

    imported = {
        n.module for n in ast.walk(ast.parse(inspect.getsource(module))) if isinstance(n, ast.ImportFrom)
    }
    assert "runs.folder" not in imported and "runs.card" in imported
    s = _trained()
    assert s.model_card(((0, 2.0), (7, 1.5))) == card_text(s.config, s.num_params, ((0, 2.0), (7, 1.5)))
    s.save_pretrained(tmp_path / "s")
    assert "not measured here" in (tmp_path / "s" / "README.md").read_text()
