"""The explained-class policies (--explain): which classes of each image get a map, in which slot."""

from __future__ import annotations

import pytest
import torch

from enhancer.explain.classes import explained_classes, union_maps
from enhancer.settings import ExplainPolicy

PROBS = torch.tensor([[0.9, 0.2, 0.6, 0.1], [0.1, 0.3, 0.2, 0.4], [0.5, 0.5, 0.7, 0.8]])


def _slots(text: str, **kw) -> list[list[int]]:
    return explained_classes(PROBS, ExplainPolicy.parse(text), **kw).tolist()


def test_policies_fill_their_slots() -> None:
    assert _slots("all") == [[0, 1, 2, 3]] * 3
    assert _slots("pred") == [[0, 2, -1, -1], [3, -1, -1, -1], [0, 1, 2, 3]]  # image 1: none >= 0.5, its top one
    assert _slots("pred", threshold=0.65) == [[0, -1, -1, -1], [3, -1, -1, -1], [2, 3, -1, -1]]
    assert _slots("top:2") == [[0, 2], [3, 1], [3, 2]]
    assert (
        _slots("Mass,Atelectasis", class_ids=ExplainPolicy.parse("Mass,Atelectasis").class_ids(NAMES)) == [[2, 0]] * 3
    )
    targets = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [-1, 0, 1, 0]])
    assert _slots("label", targets=targets) == [[1, 3, -1, -1], [3, -1, -1, -1], [2, -1, -1, -1]]
    assert _slots("label", labels=torch.tensor([1, -1, 0])) == [[1, -1, -1, -1], [3, -1, -1, -1], [0, -1, -1, -1]]


NAMES = ("Atelectasis", "Cardiomegaly", "Mass", "Nodule")


def test_policy_parsing_and_errors() -> None:
    assert ExplainPolicy.parse("top:3").slots(14) == 3 and ExplainPolicy.parse("top:30").slots(14) == 14
    assert ExplainPolicy.parse("all").slots(14) == 14 and not ExplainPolicy.parse("auto").per_class
    assert ExplainPolicy.parse("Nodule, 1").class_ids(NAMES) == (3, 1)
    with pytest.raises(ValueError, match="top:K needs a whole number"):
        ExplainPolicy.parse("top:x")
    with pytest.raises(ValueError, match="no class 'Hernia'.*Atelectasis, Cardiomegaly"):
        ExplainPolicy.parse("Hernia").class_ids(NAMES)
    with pytest.raises(ValueError, match="listed twice"):
        ExplainPolicy.parse("Mass,2").class_ids(NAMES)
    with pytest.raises(ValueError, match="labels"):
        _slots("label")


def test_union_is_the_max_over_filled_slots() -> None:
    maps = torch.stack([torch.full((2, 2), 0.2), torch.full((2, 2), 0.9)])[None]  # (1, 2, 2, 2)
    assert union_maps(maps, torch.tensor([[0, 1]])).max() == pytest.approx(0.9)
    assert union_maps(maps, torch.tensor([[0, -1]])).max() == pytest.approx(0.2)  # the empty slot counts nowhere
