"""The mini text encoder's pre-training objective: the canonical scene code of a caption."""

from __future__ import annotations

import torch

from dicecfg.minimodel import text as mt
from dicecfg.world.captions import parse


def code(caption: str) -> torch.Tensor:
    return mt.caption_codes([caption])[0]


def test_code_ignores_word_order_and_paraphrase():
    a = code("a small red circle to the left of a blue square")
    assert torch.equal(a, code("there is a blue square right of a little red circle"))
    assert torch.equal(a, code("a small red circle is left of a blue square"))
    assert not torch.equal(a, code("a big red circle to the left of a blue square"))


def test_relation_changes_exactly_the_two_roles():
    a = code("a red circle left of a blue square on a gray background")
    b = code("a red circle right of a blue square on a gray background")
    assert (a != b).sum() == 2
    c = code("a red circle above a blue square on gray")
    d = code("a blue square above a red circle on gray")
    assert (c != d).sum() == 2 and torch.equal(a[-1], c[-1])
    roles = {mt.ROLES[int(r)] for r in c[: 3 * 7 : 3] if r}
    assert roles == {"top", "bottom"}


def test_empty_prompt_and_single_object():
    assert torch.equal(code(""), torch.zeros(mt.SHAPES_CODE.n_targets, dtype=torch.long))
    one = code("a big green triangle")
    assert sorted(mt.ROLES[int(r)] for r in one[: 3 * 7 : 3]).count("only") == 1
    assert int(one[-1]) == 0  # background not said


def test_code_needs_colour_and_shape():
    spec = parse("a circle left of a blue square")
    try:
        mt.spec_code(spec)
    except ValueError as e:
        assert "colour and shape" in str(e)
    else:
        raise AssertionError("a caption without a colour must be refused")


def test_tail_mask_starts_at_end_of_text():
    ids = torch.tensor([[0, 5, 6, 9, 9, 9], [0, 9, 9, 9, 9, 9]])
    mask = mt.tail_mask(ids, eos_id=9)
    assert mask.tolist() == [[False, False, False, True, True, True], [False, True, True, True, True, True]]


def test_parse_loss_is_low_only_for_the_right_code():
    torch.manual_seed(0)
    head = mt.ParseHead(16)
    ids = torch.tensor([[0, 5, 9, 9]])
    codes = code("a red circle left of a blue square")[None]
    states = torch.randn(1, 4, 16, requires_grad=True)
    opt = torch.optim.Adam([states, *head.parameters()], lr=0.05)
    for _ in range(200):
        loss, exact = mt.parse_loss(head, states, ids, codes, eos_id=9)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert exact == 1.0 and loss < 0.05
    wrong = code("a red circle right of a blue square")[None]
    assert mt.parse_loss(head, states, ids, wrong, eos_id=9)[1] == 0.0


def test_flipped_twins_never_reach_heldout_combinations():
    from dicecfg.world.heldout import HELDOUT_PAIRS

    assert (
        mt.flipped("a red circle to the left of a blue square")
        == "a red circle to the right of a blue square"
    )
    assert (
        mt.flipped("there is a big red circle over a blue square")
        == "there is a big red circle under a blue square"
    )
    assert mt.flipped("a big green triangle on black") is None
    s0, c0, s1, c1, rel = HELDOUT_PAIRS[0]  # canonical: object 0 left of / above object 1
    other = {"left of": "right of", "above": "below"}[rel]
    assert mt.flipped(f"a {c0} {s0} {other} a {c1} {s1}") is None


def test_relation_distance_counts_tail_positions_only():
    a = torch.ones(1, 4, 2)
    b = a.clone()
    b[0, 0] = 5.0  # a prefix position: ignored
    mask = torch.tensor([[False, True, True, True]])
    assert mt.relation_distance(a, b, mask).item() == 0.0
    b[0, 3] = 0.0
    assert abs(mt.relation_distance(a, b, mask).item() - (2**0.5 / 6**0.5)) < 1e-6


# ---------------------------------------------------------------- the shapes-fine world's code
FINE = mt.CODES["shapes-fine"]


def fine_code(caption: str) -> torch.Tensor:
    return FINE.of_captions([caption])[0]


def test_fine_code_holds_patterns_and_dots_and_ignores_word_order():
    a = fine_code("a hollow red circle left of a blue square with vertical stripes and two dots")
    assert torch.equal(
        a, fine_code("a blue square with vertical stripes right of an outlined red circle and two dots")
    )
    assert not torch.equal(
        a, fine_code("a hollow red circle left of a blue square with horizontal stripes and two dots")
    )
    assert not torch.equal(
        a, fine_code("a hollow red circle left of a blue square with vertical stripes and three dots")
    )
    # the dots are the last target: 0 = not said, 1 + count otherwise ("no dots" is a count)
    assert int(fine_code("a red circle")[-1]) == 0 and int(fine_code("a red circle and no dots")[-1]) == 1
    assert (
        FINE.n_targets == 7 * 4 + 2
    )  # per colour: role, shape, size, pattern; then background, dots and len(FINE.class_sizes) == FINE.n_targets
    assert torch.equal(fine_code(""), torch.zeros(FINE.n_targets, dtype=torch.long))


def test_fine_parse_head_and_flips_follow_the_world():
    head = mt.ParseHead(8, FINE)
    assert [lg.shape[-1] for lg in head(torch.zeros(2, 8))] == FINE.class_sizes
    flip = mt.flipped("a hollow red circle left of a blue square and two dots", "shapes-fine")
    assert flip in (None, "a hollow red circle right of a blue square and two dots")
    assert mt.flipped("a hollow red circle and two dots", "shapes-fine") is None
