"""The model card (README.md) of a sharpener folder: what the sharpener is for, how it was trained, the held-out
loss its run measured (read from the folder's stats.jsonl, when it is a run folder), how to use it.

A card dicecfg wrote (front matter ``library_name: dicecfg``) is rewritten on every save; a README the user
wrote is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .folder import heldout_loss
from .io import atomic_write_text

CARD_NAME = "README.md"
OURS = "library_name: dicecfg"  # the front matter that marks a card as ours


def write_card(folder: Path, config: dict[str, Any], num_params: int) -> None:
    """Write the card of the sharpener saved in ``folder``, unless the folder holds a README of the user's."""
    card = Path(folder) / CARD_NAME
    if not card.exists() or OURS in card.read_text(encoding="utf-8", errors="replace"):
        atomic_write_text(card, card_text(config, num_params, heldout_loss(folder)))


def card_text(
    config: dict[str, Any],
    num_params: int,
    heldout: tuple[tuple[int, float], tuple[int, float]] | None = None,
) -> str:
    """The card of a sharpener with ``config`` and ``num_params`` parameters; ``heldout`` is the first and last
    (step, held-out loss) of its run (None: not measured)."""
    c = config
    base = c.get("base_model") or "unknown"
    loss = (
        f"{heldout[0][1]:.4g} at step {heldout[0][0]} (untrained: unguided sampling) -> "
        f"{heldout[1][1]:.4g} at step {heldout[1][0]} (`stats.jsonl`; lower is closer to CFG)"
        if heldout
        else "not measured here (no `stats.jsonl` of a `dice train` run beside it)"
    )
    return f"""---
{OURS}
tags: [dice, cfg-distillation]
---
# DICE sharpener for `{base}`

A {num_params / 1e6:.2f}M-parameter sharpener (DICE, arXiv 2502.03726): it edits a prompt's text embedding once,
c' = c + alpha * r(c, c_neg), so that sampling `{base}` without guidance approaches CFG at
w={c.get("guidance_scale")}, with one network evaluation per step instead of two.

- Base model: `{base}` (revision {c.get("base_revision") or "unknown"}), family `{c.get("family")}`
- Recipe: `{c.get("arch", "paper")}` network (width {c.get("inner_dim")}, {c.get("heads")} heads), {c.get("loss")} loss,
  teacher CFG w={c.get("guidance_scale")}, {c.get("train_steps")} steps; every setting is in `run.json` when present
- Held-out distillation loss: {loss}
- Trained with dicecfg {c.get("dicecfg_version")}; not pushed anywhere by dicecfg.

## Use

```bash
dice sample "a corgi on the beach" --model {base} --sharpener THIS_FOLDER
```
```python
from dicecfg import Sharpener, load_pipeline, sharpen
pipe = load_pipeline("{base}")
sharp = Sharpener.from_pretrained("THIS_FOLDER")
image = pipe(**sharpen(pipe, sharp, ["a corgi on the beach"]), guidance_scale=1.0).images[0]
```
"""
