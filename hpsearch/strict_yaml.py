"""Space-file YAML: PyYAML's safe loader, made strict where a hand-written (or hostile) file needs it.

- A key given twice in one mapping is refused with its dotted path and line; PyYAML keeps the last one
  silently, so `low: 0.1` written twice would quietly search another range.
- Aliases (`*name`) are refused: a space file has no use for them, and they are how a few lines expand
  into billions of values when walked ("billion laughs"). Anchors alone are harmless and kept.
- Nesting deeper than MAX_DEPTH is refused before the composer's recursion can exhaust the stack.
- A scalar that its constructor refuses (a timestamp `2024-13-45`, an int past Python's digit limit)
  is a YAML error with its line, not a ValueError traceback.

Every refusal is a SpecError naming the file (or, for a duplicate key, the dotted path of the mapping).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

from hpsearch.checks import SpecError, clipped, shown

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
        else:
            segment = f"[{index}]" if isinstance(index, int) else ""
        self._trail.append(segment)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._trail.pop()
        if isinstance(node, MappingNode):
            self._paths[node] = "".join([*self._trail, segment]).lstrip(".")
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
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue  # `<<:` merges are checked by PyYAML's flatten_mapping
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


def load(text: str, where: str) -> Any:
    """The one document in `text` (the file `where`), or a SpecError: invalid YAML with its line and column,
    a duplicate key, an alias, nesting deeper than MAX_DEPTH."""
    loader = _Loader(text, where)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = clipped(e.problem or e.context or "malformed", 200)
        where_in = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(where, f"invalid YAML{where_in}: {problem}") from None
    except yaml.YAMLError as e:
        raise SpecError(where, f"invalid YAML: {clipped(str(e), 200)}") from None
    finally:
        loader.dispose()
