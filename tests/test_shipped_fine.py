"""The shipped shapes-fine model (``mini-fine``) and its sharpener: loading by name offline, one tiny image, the
package's weight budget (issue 29: both models and both sharpeners at most 40 MiB, no file over 16 MB)."""

import numpy as np
import pytest

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.assets import ASSETS, MODELS, SHARPENERS
from dicecfg.families import check_compatible
from dicecfg.metrics.world import world_of
from dicecfg.world.fine import heldout_set

pytestmark = pytest.mark.skipif(
    not (MODELS["mini-fine"] / "model_index.json").is_file(), reason="the mini-fine assets are not installed"
)


def test_mini_fine_loads_by_name_and_samples_one_image():
    pipe = load_pipeline("mini-fine")
    assert world_of(pipe) == "shapes-fine" and pipe.unet.dtype.is_floating_point
    sharp = Sharpener.from_pretrained("mini-fine")
    assert check_compatible(pipe, sharp).name == "sd" and sharp.config["train_steps"] > 0
    assert "sampling" in sharp.config  # the settings `dice tune` chose, recorded with it
    item = heldout_set()[0]
    (sample,) = generate(
        pipe,
        [item.prompt],
        method="dice",
        sharpener=sharp,
        seeds=[item.seed],
        num_inference_steps=4,
        progress=False,
    )
    image = np.asarray(sample.image)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 5


def test_shipped_weights_fit_the_package_budget():
    files = list(ASSETS.rglob("*.safetensors"))
    assert {MODELS["mini-fine"], SHARPENERS["mini-fine"]} <= {p.parents[i] for p in files for i in range(2)}
    assert max(p.stat().st_size for p in files) <= 16 * 10**6
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20
