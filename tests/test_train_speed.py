"""The speed options of `dice train` that do not change the recipe (docs/recipes.md, "Speed options"): each one
trains like the default up to float rounding and may change between a run and its resume."""

import pytest
import torch
from helpers import FAST_FAULTS
from safetensors import safe_open

from dicecfg import DistillConfig, distill
from dicecfg.runs.folder import CHECKPOINT

SMALL = dict(FAST_FAULTS, checkpoint_every=2, eval_every=0)  # every step logged, a checkpoint every 2


def _groups(run_dir) -> list[dict]:
    """The optimizer's param groups as the run folder's checkpoint records them."""
    import json

    with safe_open(str(run_dir / CHECKPOINT), framework="pt") as f:
        return json.loads(f.metadata()["param_groups"])


def test_the_sharpeners_adamw_is_fused_only_where_every_parameter_is_on_cuda():
    from dicecfg.training.loop import fused_for, new_optimizer

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert fused_for([cuda, torch.device("cuda", 1)]) and fused_for(["cuda"])
    assert not fused_for([cuda, cpu]) and not fused_for([cpu]) and not fused_for([])
    cfg = DistillConfig(lr=3e-4, weight_decay=0.05)
    (group,) = new_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg).param_groups
    assert group["fused"] is None and group["lr"] == 3e-4 and group["weight_decay"] == 0.05  # CPU: as before


@pytest.mark.integration  # end to end: a pipeline, a command or a process
@pytest.mark.parametrize("first", ["unfused", "fused"])
def test_a_checkpoint_resumes_across_fused_and_unfused_adamw(first, tiny_sd, prompts, tmp_path, monkeypatch):
    """A run saved with one AdamW implementation resumes with the other (an H100 run resumed on a CPU, or the
    other way round), in the resuming process's own implementation, and ends where an uninterrupted run ends up
    to float rounding. PyTorch's fused AdamW also runs on a CPU, so the test forces it there."""
    import dicecfg.training.loop as loop

    def run(fused: bool, steps: int, out: str):
        monkeypatch.setattr(loop, "fused_for", lambda devices: fused)
        return distill(
            tiny_sd, prompts, config=DistillConfig(steps=steps, **SMALL), output_dir=tmp_path / out
        )

    full = run(first == "fused", 4, "full")
    run(first == "fused", 2, "part")
    assert bool(_groups(tmp_path / "part")[0]["fused"]) is (first == "fused")
    resumed = run(first != "fused", 4, "part")
    assert bool(_groups(tmp_path / "part")[0]["fused"]) is (
        first != "fused"
    )  # the live one, not the saved one
    # Adam divides by the root of the second moment, so rounding differences of small gradients grow to ~1e-6;
    # a resume that lost the moments or the step count would be off by about the learning rate (2e-3)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=SMALL["lr"] / 20), (k, (a - b).abs().max())
