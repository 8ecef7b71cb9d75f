"""The shipped shapes-fine model (``mini-fine``) and its sharpener: loading by name offline, one tiny image (the
package's weight budget, both worlds together: tests/test_minimodel.py)."""

import numpy as np
import pytest

from dicecfg import Sharpener, generate, load_pipeline
from dicecfg.assets import MODELS
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
