"""The mini model's text encoder, pre-trained to parse captions into a canonical scene code, then frozen.

Why not train it jointly with the UNet: that was tried first, and the joint encoder nearly erased the
relation words (swapping "left" for "right" changed its 77 token states by 0.8%, a colour word by 51%), so
the UNet, and therefore CFG, could not follow relations (``benchmarks/mini_model/relation_diagnosis.py``).

Objective: from the hidden state at the end-of-text token *and at every padding position after it* (the
positions that, under CLIP's causal mask, have seen the whole caption), linear heads predict a canonical
code of what the caption asserts, independent of word order and paraphrase. Colours are distinct within
a scene, so the code is indexed by colour: for each palette colour its role (absent, the only object,
the object on the left / right / top / bottom), its shape and its size (or "not said"); plus the
background (or "not said"). "a red circle left of a blue square" and "a blue square right of a red
circle" get the same code; swapping left and right changes two roles. The empty prompt (caption
dropout) has its own code: everything absent.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..world.captions import Spec, parse
from ..world.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES

ROLES = ("absent", "only", "left", "right", "top", "bottom")
_ROLE_OF = {"left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom")}
_ROLE_OF["below"] = ("bottom", "top")
# per colour: role, shape (0 = none), size (0 = not said); then the background (0 = not said)
FIELDS = (("role", len(ROLES)), ("shape", 1 + len(SHAPES)), ("size", 1 + len(SIZES)))
N_TARGETS = len(COLOURS) * len(FIELDS) + 1
N_LOGITS = len(COLOURS) * sum(n for _, n in FIELDS) + 1 + len(BACKGROUNDS)


def spec_code(spec: Spec) -> np.ndarray:
    """The canonical code of a caption's spec: ``N_TARGETS`` class indices (see the module doc)."""
    code = np.zeros((len(COLOURS), len(FIELDS)), dtype=np.int64)
    roles = ("only",) if len(spec.objects) == 1 else _ROLE_OF[spec.relation]
    for obj, role in zip(spec.objects, roles, strict=True):
        if obj.colour is None or obj.shape is None:
            raise ValueError(f"pre-training captions name every object's colour and shape, got {spec}")
        size = 0 if obj.size is None else 1 + SIZES.index(obj.size)
        code[COLOURS.index(obj.colour)] = (ROLES.index(role), 1 + SHAPES.index(obj.shape), size)
    bg = 0 if spec.background is None else 1 + BACKGROUNDS.index(spec.background)
    return np.concatenate([code.reshape(-1), [bg]])


def caption_codes(captions: list[str]) -> torch.Tensor:
    """(N, N_TARGETS) codes of captions of the grammar; the empty caption gets the all-absent code."""
    empty = np.zeros(N_TARGETS, dtype=np.int64)
    return torch.from_numpy(np.stack([spec_code(parse(c)) if c else empty for c in captions]))


class ParseHead(torch.nn.Module):
    """Linear heads from one hidden state to the code's logits (used in pre-training only; not shipped)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden, N_LOGITS)

    def forward(self, states: torch.Tensor) -> list[torch.Tensor]:
        """(..., hidden) -> one (..., classes) logit tensor per target, in code order."""
        logits = self.proj(states)
        sizes = [n for _ in COLOURS for _, n in FIELDS] + [1 + len(BACKGROUNDS)]
        return list(logits.split(sizes, dim=-1))


def tail_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, L) bool: the first end-of-text token and every position after it."""
    is_eos = (ids == eos_id).int()
    return is_eos.cumsum(dim=1) > 0


def parse_loss(
    head: ParseHead, states: torch.Tensor, ids: torch.Tensor, codes: torch.Tensor, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of the code over every tail position, and the share of tail positions whose
    whole code is predicted exactly."""
    mask = tail_mask(ids, eos_id)
    rows = states[mask]  # (n, hidden)
    targets = codes.to(states.device).unsqueeze(1).expand(-1, ids.shape[1], -1)[mask]  # (n, N_TARGETS)
    logits = head(rows.float())
    loss = sum(F.cross_entropy(lg, targets[:, k]) for k, lg in enumerate(logits)) / len(logits)
    exact = torch.stack([lg.argmax(-1) == targets[:, k] for k, lg in enumerate(logits)], 1).all(1)
    return loss, exact.float().mean()


def heldout_exact(text_encoder, tokenizer, head: ParseHead, device: torch.device, n: int = 512) -> float:
    """Share of held-out prompts (unseen attribute combinations) whose code is read exactly at the
    end-of-text token and at every padding position."""
    from ..world.heldout import heldout_set
    from . import model as mm

    prompts = [it.prompt for it in heldout_set(n)]
    ids = mm.tokenize(tokenizer, prompts).to(device)
    codes = caption_codes(prompts).to(device)
    with torch.no_grad():
        states = text_encoder(ids)[0].float()
        mask = tail_mask(ids, tokenizer.eos_token_id)
        ok = torch.stack([lg.argmax(-1) == codes[:, None, k] for k, lg in enumerate(head(states))], -1).all(
            -1
        )  # (B, L)
        return float((ok | ~mask).all(1).float().mean())


_FLIP = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "over": "under",
    "under": "over",
}


def flipped(caption: str) -> str | None:
    """The caption with its relation reversed ("left" <-> "right", ...), or None if that caption is of a
    held-out combination (never shown in training) or has no relation."""
    from ..world.heldout import is_heldout

    flip = " ".join(_FLIP.get(w, w) for w in caption.split())
    return None if flip == caption or is_heldout(parse(flip)) else flip


def relation_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per caption: ||a - b|| / ||a|| over the tail positions (``mask``) of two (B, L, H) state tensors."""
    m = mask.unsqueeze(-1).to(a.dtype)
    return ((a - b) * m).flatten(1).norm(dim=1) / (a * m).flatten(1).norm(dim=1).clamp_min(1e-6)


def pretraining_loss(text_encoder, head: ParseHead, data: dict[str, torch.Tensor], cfg, eos_id: int):
    """A closure ``loss_fn(generator)`` for :func:`minimodel.loop.train`.

    ``data``: ``ids``/``codes`` of the captions (row 0 = the empty prompt) and ``flip_ids``/``flip_codes``
    of their relation-reversed twins (the caption itself where :func:`flipped` gives None), ``has_flip``.
    Each step: a random batch, a share ``cfg.caption_dropout`` replaced by the empty prompt; the parse loss
    on the batch and its twins, plus a hinge that keeps every caption's tail states at least
    ``cfg.relation_margin`` (relative L2) away from its twin's, so relations are not a faint signal.
    """
    ids = data["ids"]
    device = ids.device
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        b = cfg.text_batch
        idx = torch.randint(1, len(ids), (b,), generator=g, device=device)
        drop = torch.rand(b, generator=g, device=device) < cfg.caption_dropout
        idx = torch.where(drop, 0, idx)
        both = torch.cat([ids[idx], data["flip_ids"][idx]])
        with amp:
            states = text_encoder(both)[0].float()
        loss = parse_loss(
            head, states, both, torch.cat([data["codes"][idx], data["flip_codes"][idx]]), eos_id
        )[0]
        dist = relation_distance(states[:b], states[b:], tail_mask(ids[idx], eos_id))
        hinge = torch.relu(cfg.relation_margin - dist) * data["has_flip"][idx]
        return loss + hinge.sum() / data["has_flip"][idx].sum().clamp_min(1)

    return loss_fn


def pretraining_data(tokenizer, captions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Token ids and codes of ``[""] + captions`` and of their relation-reversed twins."""
    from . import model as mm

    captions = ["", *captions]
    flips = [flipped(c) if c else None for c in captions]
    twins = [f or c for c, f in zip(captions, flips, strict=True)]
    return {
        "ids": mm.tokenize(tokenizer, captions).to(device),
        "codes": caption_codes(captions).to(device),
        "flip_ids": mm.tokenize(tokenizer, twins).to(device),
        "flip_codes": caption_codes(twins).to(device),
        "has_flip": torch.tensor([f is not None for f in flips], dtype=torch.float32, device=device),
    }
