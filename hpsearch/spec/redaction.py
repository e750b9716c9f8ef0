"""Specs and space files as they may be stored, exported or shown: every store URL masked (by value, see
core.credentials)."""

from __future__ import annotations

import dataclasses
import json

from hpsearch.core.checks import SpecError
from hpsearch.core.credentials import learn_text, mask_url, redact
from hpsearch.spec import strict_yaml
from hpsearch.spec.spec_types import Spec


def masked_space_file(path: str) -> str | None:
    """The space file at `path` as it may be stored (the parent run's `space/` artifact), masked by value: parsed,
    each string holding :// rewritten with its URLs masked, then every secret those hold hidden wherever else it
    shows (a comment, another value). None when the file cannot be read or parsed (moved or edited since the
    run): nothing in it could then be told apart from a secret."""
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    try:
        text = strict_yaml.read_text(path)
        root = strict_yaml.compose(text, path)
    except SpecError:
        return None
    urls: list[ScalarNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, MappingNode):
            stack.extend(part for pair in node.value for part in pair)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, ScalarNode) and "://" in node.value:
            learn_text(node.value)
            urls.append(node)
    for node in sorted(urls, key=lambda n: n.start_mark.index, reverse=True):  # from the end: indices hold
        masked = redact(mask_url(node.value) or "")
        if masked != node.value:
            start, end = node.start_mark.index, node.end_mark.index
            span = text[start:end]
            # A JSON string is a YAML double-quoted one; a block scalar's span ends with its line breaks.
            text = text[:start] + json.dumps(masked) + span[len(span.rstrip()):] + text[end:]
    return redact(text)


def masked_spec(spec: Spec) -> Spec:
    """The spec as it may be stored or exported: store URLs masked."""
    return dataclasses.replace(
        spec,
        study=dataclasses.replace(spec.study, storage=mask_url(spec.study.storage)),
        tracking=dataclasses.replace(spec.tracking, uri=mask_url(spec.tracking.uri) or spec.tracking.uri),
    )
