"""Text from a study (names, params, fail reasons, user attrs: anyone with access to a shared storage
writes them) as it may reach a terminal: control characters shown escaped, never interpreted."""

from __future__ import annotations

import re
from typing import Any

# C0 and C1 controls (ESC, BEL, CR, newline: a line could be rewritten or faked), DEL, and the
# invisible format characters that reorder or hide text (bidi overrides, zero-width marks).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def escaped(value: Any) -> str:
    """str(value) with each control character written as Python writes it in a repr (\\x1b, \\n, \\u202e)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))
