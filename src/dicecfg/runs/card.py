"""The model card (README.md) of a sharpener folder: what the sharpener is for, how it was trained, the held-out
loss its run measured (read from the folder's stats.jsonl, when it is a run folder), how to use it.

The generated text of a card sits between two marks (``<!-- dicecfg:card -->`` ... ``<!-- /dicecfg:card -->``):
a save regenerates only that section, so what a user adds above or below it stays. A card dicecfg wrote before
the marks (front matter ``library_name: dicecfg``, no marks) is rewritten whole; a README the user wrote is
kept. `dice tune` keeps its own marked section (``dicecfg:sampling``: the recorded sampling settings and the
ones they replaced) and touches nothing else (:func:`with_section`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .folder import heldout_loss
from .io import atomic_write_text

CARD_NAME = "README.md"
OURS = "library_name: dicecfg"  # the front matter that marks a card as ours
CARD_SECTION = "card"  # the generated body of a card
SAMPLING_SECTION = "sampling"  # the settings `dice tune` recorded


def marks(section: str) -> tuple[str, str]:
    """The two lines that enclose a generated ``section`` of a card."""
    return f"<!-- dicecfg:{section} -->", f"<!-- /dicecfg:{section} -->"


def with_section(text: str, section: str, body: str) -> str:
    """``text`` with its marked ``section`` replaced by ``body`` (appended at the end when it has none); every
    other line stays as it was."""
    start, end = marks(section)
    block = f"{start}\n{body.strip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        return text[:i] + block + text[j + len(end) :]
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"


def write_card(folder: Path, config: dict[str, Any], num_params: int) -> None:
    """Write the card of the sharpener saved in ``folder``: a new card, or only the generated section of one
    that has it; an older card of ours without marks is rewritten, a README of the user's is kept."""
    card = Path(folder) / CARD_NAME
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else None
    new = card_text(config, num_params, heldout_loss(folder))
    if text is not None and marks(CARD_SECTION)[0] in text:
        start, end = marks(CARD_SECTION)
        body = new[new.index(start) + len(start) : new.index(end)]
        atomic_write_text(card, with_section(text, CARD_SECTION, body))
    elif text is None or OURS in text:
        atomic_write_text(card, new)


def sampling_section(settings: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The card's account of the recorded sampling settings (written by `dice tune`) and those they replaced."""
    lines = ["## Sampling settings (recorded by `dice tune`)", "", f"- now: `{_settings_text(settings)}`"]
    lines += [
        f"- before {h.get('replaced', '?')}: `{_settings_text(h.get('sampling'))}`" for h in reversed(history)
    ]
    lines += ["", "Every earlier setting is kept in `config.json` under `sampling_history`."]
    return "\n".join(lines)


def _settings_text(settings: Any) -> str:
    if not isinstance(settings, dict):
        return "none (the paper's: alpha 1 on every step)"
    return ", ".join(f"{k}={v}" for k, v in settings.items())


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
    start, end = marks(CARD_SECTION)
    edit, use = "it edits a prompt's text embedding once,\nc' = c + alpha * r(c, c_neg)", STATIC_USE
    timed = c.get("time_embed", "none") != "none" or c.get("time_edges")
    if timed:  # sharpen() cannot apply it (one embedding before the pipeline's timesteps): enable_dice can
        how = f"time_embed={c['time_embed']}" if c.get("time_embed", "none") != "none" else "time_edges"
        edit = f"it edits a prompt's text embedding at each step's\ntimestep ({how}), c' = c + alpha * r(c, c_neg, t)"
        use = TIMED_USE
    return f"""---
{OURS}
tags: [dice, cfg-distillation]
---
{start}
# DICE sharpener for `{base}`

A {num_params / 1e6:.2f}M-parameter sharpener (DICE, arXiv 2502.03726): {edit}, so that sampling `{base}` without guidance approaches CFG at
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
from dicecfg import Sharpener, load_pipeline{use[0]}
pipe = load_pipeline("{base}")
sharp = Sharpener.from_pretrained("THIS_FOLDER")
{use[1]}
```
{end}
"""


# the card's Python example: what it imports besides Sharpener and load_pipeline, and its last line
STATIC_USE = (
    ", sharpen",
    'image = pipe(**sharpen(pipe, sharp, ["a corgi on the beach"]), guidance_scale=1.0).images[0]',
)
TIMED_USE = (", enable_dice", 'image = enable_dice(pipe, sharp)("a corgi on the beach").images[0]')
