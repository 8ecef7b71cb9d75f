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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..world.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES
from ..world.worlds import DEFAULT_WORLD, get_world

ROLES = ("absent", "only", "left", "right", "top", "bottom")
_ROLE_OF = {"left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom")}
_ROLE_OF["below"] = ("bottom", "top")


@dataclass(frozen=True)
class SceneCode:
    """A world's canonical code: per palette colour its role (``ROLES``) and one class per object field
    (0 = no such object / not said, else 1 + the value's index), then one class per scene field (0 = not
    said). The shapes world's: (role, shape, size) per colour, then the background; shapes-fine adds each
    object's pattern and the number of dots."""

    world: str
    object_fields: tuple[tuple[str, tuple], ...]  # (attribute of an object spec, its values)
    scene_fields: tuple[tuple[str, tuple], ...]  # (attribute of a spec, its values)

    @property
    def class_sizes(self) -> list[int]:
        """Number of classes of each target, in code order."""
        per_colour = [len(ROLES)] + [1 + len(v) for _, v in self.object_fields]
        return per_colour * len(COLOURS) + [1 + len(v) for _, v in self.scene_fields]

    @property
    def n_targets(self) -> int:
        return len(self.class_sizes)

    def of_spec(self, spec) -> np.ndarray:
        """The code of a caption's spec: ``n_targets`` class indices."""
        code = np.zeros((len(COLOURS), 1 + len(self.object_fields)), dtype=np.int64)
        roles = ("only",) if len(spec.objects) == 1 else _ROLE_OF[spec.relation]
        for obj, role in zip(spec.objects, roles, strict=True):
            if obj.colour is None or obj.shape is None:
                raise ValueError(f"pre-training captions name every object's colour and shape, got {spec}")
            fields = [
                0 if getattr(obj, k) is None else 1 + v.index(getattr(obj, k)) for k, v in self.object_fields
            ]
            code[COLOURS.index(obj.colour)] = (ROLES.index(role), *fields)
        scene = [
            0 if getattr(spec, k) is None else 1 + v.index(getattr(spec, k)) for k, v in self.scene_fields
        ]
        return np.concatenate([code.reshape(-1), scene])

    def of_captions(self, captions: list[str]) -> torch.Tensor:
        """(N, n_targets) codes of captions of the world's grammar; the empty caption: all absent."""
        parse = get_world(self.world).parse
        empty = np.zeros(self.n_targets, dtype=np.int64)
        return torch.from_numpy(np.stack([self.of_spec(parse(c)) if c else empty for c in captions]))


def _fine_code() -> SceneCode:
    from ..world.fine.scenes import DOT_COUNTS, PATTERNS

    objects = (("shape", SHAPES), ("size", SIZES), ("pattern", PATTERNS))
    return SceneCode("shapes-fine", objects, (("background", BACKGROUNDS), ("dots", DOT_COUNTS)))


CODES = {
    "shapes": SceneCode("shapes", (("shape", SHAPES), ("size", SIZES)), (("background", BACKGROUNDS),)),
    "shapes-fine": _fine_code(),
}
SHAPES_CODE = CODES[DEFAULT_WORLD]


def spec_code(spec, code: SceneCode = SHAPES_CODE) -> np.ndarray:
    """The canonical code of a caption's spec (see :class:`SceneCode`)."""
    return code.of_spec(spec)


def caption_codes(captions: list[str], code: SceneCode = SHAPES_CODE) -> torch.Tensor:
    """(N, n_targets) codes of captions; the empty caption gets the all-absent code."""
    return code.of_captions(captions)


class ParseHead(torch.nn.Module):
    """Linear heads from one hidden state to the code's logits (used in pre-training only; not shipped)."""

    def __init__(self, hidden: int, code: SceneCode = SHAPES_CODE):
        super().__init__()
        self.sizes = code.class_sizes
        self.proj = torch.nn.Linear(hidden, sum(self.sizes))

    def forward(self, states: torch.Tensor) -> list[torch.Tensor]:
        """(..., hidden) -> one (..., classes) logit tensor per target, in code order."""
        return list(self.proj(states).split(self.sizes, dim=-1))


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


def heldout_exact(
    text_encoder,
    tokenizer,
    head: ParseHead,
    device: torch.device,
    n: int = 512,
    code: SceneCode = SHAPES_CODE,
) -> float:
    """Share of the world's held-out prompts (unseen attribute combinations) whose code is read exactly at
    the end-of-text token and at every padding position."""
    from . import model as mm

    prompts = [it.prompt for it in get_world(code.world).heldout_set(n)]
    ids = mm.tokenize(tokenizer, prompts).to(device)
    codes = code.of_captions(prompts).to(device)
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


def flipped(caption: str, world: str = DEFAULT_WORLD) -> str | None:
    """The caption with its relation reversed ("left" <-> "right", ...), or None if that caption is of a
    held-out combination of ``world`` (never shown in training) or has no relation."""
    w = get_world(world)
    flip = " ".join(_FLIP.get(word, word) for word in caption.split())
    return None if flip == caption or w.is_heldout(w.parse(flip)) else flip


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


def pretraining_data(
    tokenizer, captions: list[str], device: torch.device, code: SceneCode = SHAPES_CODE
) -> dict[str, torch.Tensor]:
    """Token ids and codes of ``[""] + captions`` and of their relation-reversed twins."""
    from . import model as mm

    captions = ["", *captions]
    flips = [flipped(c, code.world) if c else None for c in captions]
    twins = [f or c for c, f in zip(captions, flips, strict=True)]
    return {
        "ids": mm.tokenize(tokenizer, captions).to(device),
        "codes": code.of_captions(captions).to(device),
        "flip_ids": mm.tokenize(tokenizer, twins).to(device),
        "flip_codes": code.of_captions(twins).to(device),
        "has_flip": torch.tensor([f is not None for f in flips], dtype=torch.float32, device=device),
    }
