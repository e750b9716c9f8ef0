"""A population's paused members on disk (orchestration/paused_members.py): each checkpoint kept exactly as long as
some member can use it, within the size budget."""

from __future__ import annotations

import pytest
import torch

from hpsearch.core.errors import RunFailure
from hpsearch.orchestration.paused_members import PausedMembers, still_needed


def test_a_checkpoint_lives_while_its_member_resumes_from_it_or_a_slower_member_may_copy_it():
    stored = {(0, 2), (0, 4), (1, 2), (2, 2)}
    # Member 2 is still at epoch 2: the epoch-4 checkpoint of member 0 must wait for it; member 0's epoch-2 one
    # can go only once nobody is below epoch 2 and it is not member 0's latest.
    assert still_needed(stored, {0: 4, 1: 2, 2: 2}) == {(0, 4), (1, 2), (2, 2)}
    assert still_needed(stored, {0: 4, 1: 3, 2: 1}) == stored  # member 2 below 2: every epoch-2 one may be copied
    assert still_needed({(0, 6), (1, 6)}, {0: 6, 1: 6}) == {(0, 6), (1, 6)}  # each member's latest stays
    # A finished (or failed) member resumes from nothing; once every member has finished, nothing is kept.
    assert still_needed({(0, 4), (1, 4)}, {0: 6, 1: 4}, frozenset({0})) == {(1, 4)}
    assert still_needed({(0, 4), (1, 4)}, {0: 6, 1: 6}, frozenset({0, 1})) == set()


def state(mb: float) -> dict:
    return {"format": 1, "epoch": 0, "model": {"w": torch.zeros(int(mb * 1e6 / 4))}}


def test_a_member_moving_on_leaves_about_one_checkpoint_each(tmp_path):
    store = PausedMembers(tmp_path / "pbt", budget_bytes=10**9)
    for epoch in (2, 4, 6):
        for member in (0, 1, 2):
            reached = {m: epoch if m <= member else epoch - 2 for m in (0, 1, 2)}
            store.keep(member, epoch, state(0.1), reached)
    assert store.stored() == {(0, 6), (1, 6), (2, 6)}
    assert torch.equal(store.load(1, 6)["model"]["w"], state(0.1)["model"]["w"])
    assert not list((tmp_path / "pbt").glob(".*"))  # no partial file left


def test_over_the_budget_is_one_line_and_keeps_what_was_stored(tmp_path):
    store = PausedMembers(tmp_path / "pbt", budget_bytes=int(1.5e6))
    store.keep(0, 2, state(1.0), {0: 2, 1: 0})
    budget = r"paused members need 2.0 MB, over study.scheduler's checkpoint budget of 1.5 MB"
    with pytest.raises(RunFailure, match=budget):
        store.keep(1, 2, state(1.0), {0: 2, 1: 2})
    assert store.stored() == {(0, 2), (1, 2)}  # nothing lost: a resumed run goes on from both
