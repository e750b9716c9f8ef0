"""Seeds: one study seed gives every trial its own, the same on every machine and in every process.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial, hashed from the study seed and the trial number (stable across machines):
    the trial's sampler draws with it and its training starts from it. Hashed rather than added: with
    `seed + n`, study seed 1's trial 0 would replay seed 0's trial 1, and searches "with other seeds"
    would share most of their samples."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF  # numpy and torch both take it
