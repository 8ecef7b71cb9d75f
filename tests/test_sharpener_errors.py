"""Sharpener files that must not load: pickles are refused and never unpickled, a damaged config is named
(docs/reliability.md). The other loading errors are in test_sharpener.py."""

import pickle

import pytest

from dicecfg import Sharpener
from dicecfg.cli import main
from dicecfg.errors import SharpenerLoadError


class _Evil:
    """Unpickling this creates the marker file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_pickles_are_refused_and_never_unpickled(tiny_sd_dir, tmp_path, capsys):
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(_Evil(marker))
    assert not marker.exists()
    for name in ("evil.pt", "evil.bin", "evil.pkl"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(SharpenerLoadError, match="never loads pickles"):
            Sharpener.from_pretrained(tmp_path / name)
    only_bin = tmp_path / "only_bin"
    only_bin.mkdir()
    (only_bin / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(
        SharpenerLoadError, match=r"missing config.json, model.safetensors.*pytorch_model.bin"
    ):
        Sharpener.from_pretrained(only_bin)
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(tmp_path / "renamed")
    (tmp_path / "renamed" / "model.safetensors").write_bytes(payload)  # a pickle behind the right name
    with pytest.raises(SharpenerLoadError, match="not a readable safetensors"):
        Sharpener.from_pretrained(tmp_path / "renamed")
    code = main(["sample", "x", "--model", str(tiny_sd_dir), "--sharpener", str(tmp_path / "evil.pt"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pickle" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.integration  # end to end: a pipeline, a command or a process
def test_corrupt_config_and_wrong_family(tiny_sd_dir, tmp_path, capsys):
    sh = tmp_path / "sh"
    Sharpener(32, inner_dim=64, heads=4).save_pretrained(sh)
    (sh / "config.json").write_text("[1, 2")
    with pytest.raises(SharpenerLoadError, match="not valid JSON"):
        Sharpener.from_pretrained(sh)
    (sh / "config.json").write_text("[1, 2]")
    with pytest.raises(SharpenerLoadError, match="does not describe a sharpener"):
        Sharpener.from_pretrained(sh)
    Sharpener(32, inner_dim=64, heads=4, family="pixart").save_pretrained(tmp_path / "px")
    code = main(["sample", "x", "--model", str(tiny_sd_dir), "--sharpener", str(tmp_path / "px"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "'pixart' family" in err and err.count("\n") == 1
