"""Space-file YAML: PyYAML's safe loader, made strict where a hand-written (or hostile) file needs it.

- A key given twice in one mapping is refused with its dotted path and line; PyYAML keeps the last one
  silently, so `low: 0.1` written twice would quietly search another range.
- Aliases (`*name`) are refused: a space file has no use for them, and they are how a few lines expand
  into billions of values when walked ("billion laughs"). Anchors alone are harmless and kept.
- Nesting deeper than MAX_DEPTH is refused before the composer's recursion can exhaust the stack.
- Merge keys (`<<:`) are refused: the values they bring in never meet the duplicate-key check, and of two
  merged mappings the first silently wins.
- A control byte (NUL, ESC, BEL...) is a YAML error with its line and code point, never the byte itself.
- A scalar that its constructor refuses (a timestamp `2024-13-45`, an int past Python's digit limit)
  is a YAML error with its line, not a ValueError traceback.

Every refusal is a SpecError naming the file (or, for a duplicate key, the dotted path of the mapping).
`read_text` reads such a file: a regular file only, bounded.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

from hpsearch.core.checks import SpecError, clipped, shown

MAX_FILE_BYTES = 256 << 10  # a space file or an export is a few KB; this bounds the pure-Python YAML parse at ~3 s
MAX_DEPTH = 50  # a space file nests 4 or 5 levels; Python's stack holds ~300 of the composer's levels
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    def __init__(self, text: str, where: str):
        super().__init__(text)
        self.where = where
        self._trail: list[str] = []  # path segments of the node being composed
        self._paths: dict[Node, str] = {}  # each mapping node → its dotted path, for duplicate-key errors

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, f"aliases are not allowed in a space file, got *{clipped(event.anchor)}",
                                event.start_mark)
        if len(self._trail) >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        # index: the key node of a mapping value, the position of a sequence item, None for a key itself.
        if isinstance(index, ScalarNode):
            segment = f".{index.value}"
        elif isinstance(index, int):
            segment = f"[{index}]"
        else:
            segment = ""
        self._trail.append(segment)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._trail.pop()
        if isinstance(node, MappingNode):
            self._paths[node] = "".join([*self._trail, segment]).lstrip(".")
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    raise ComposerError(None, None, "merge keys (<<) are not allowed in a space file",
                                        key_node.start_mark)
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:  # a scalar's constructor (int(), datetime()) refused it
            kind = str(node.tag).rsplit(":", 1)[-1]
            reason = clipped(str(e).split(":", 1)[0], 70)  # its first clause; the rest may quote the value
            raise ConstructorError(None, None, f"cannot read {shown(node.value)} as {kind}: {reason}",
                                   node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        if isinstance(node, MappingNode):
            seen: set = set()
            for key_node, _ in node.value:  # no merge key: compose_node refused them
                key = self.construct_object(key_node, deep=True)
                try:
                    again = key in seen
                except TypeError:
                    continue  # an unhashable key: PyYAML's own construct_mapping refuses it with its line
                if again:
                    line = key_node.start_mark.line + 1
                    raise SpecError(self._paths.get(node) or self.where, f"duplicate key {shown(key)} (line {line})")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_text(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES, kind: str = "space file") -> str:
    """The UTF-8 text of the regular file `path`, at most `max_bytes`, or a SpecError naming it. Opened without
    blocking and checked before it is read: a FIFO would block open() forever, a device never ends."""
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpecError(where, "no such file") from None
    except OSError as e:
        raise SpecError(where, e.strerror or str(e)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SpecError(where, "is a directory, not a file" if stat.S_ISDIR(mode) else "is not a regular file")
    with open(fd, "rb") as f:
        try:
            raw = f.read(max_bytes + 1)
        except OSError as e:
            raise SpecError(where, e.strerror or str(e)) from None
    if len(raw) > max_bytes:
        raise SpecError(where, f"is larger than {max_bytes >> 10} KiB: not a {kind}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(where, "is not UTF-8 text") from None


def load(text: str, where: str) -> Any:
    """The one document in `text` (the file `where`), or a SpecError: invalid YAML with its line and column,
    a duplicate key, an alias, a merge key, a control byte, nesting deeper than MAX_DEPTH."""
    return _read(text, where, lambda loader: loader.get_single_data())


def compose(text: str, where: str) -> Node | None:
    """The node tree of the one document in `text` (each scalar with its place in the text), refused as `load`
    refuses it."""
    return _read(text, where, lambda loader: loader.get_single_node())


def _read(text: str, where: str, read: Callable[[_Loader], Any]) -> Any:
    loader = None
    try:
        loader = _Loader(text, where)  # its reader refuses control bytes, before a line is parsed
        return read(loader)
    except yaml.reader.ReaderError as e:
        before = text[:e.position]
        line, column = before.count("\n") + 1, e.position - (before.rfind("\n") + 1) + 1
        code = int(e.character)  # its code point: the byte itself would reach the terminal
        problem = f"{'control character' if code < 0x20 or 0x7F <= code < 0xA0 else 'character'} U+{code:04X}"
        raise SpecError(where, f"invalid YAML at line {line}, column {column}: {problem} is not allowed") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = clipped(e.problem or e.context or "malformed", 200)
        where_in = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(where, f"invalid YAML{where_in}: {problem}") from None
    except yaml.YAMLError as e:
        raise SpecError(where, f"invalid YAML: {clipped(str(e), 200)}") from None
    finally:
        if loader is not None:
            loader.dispose()
