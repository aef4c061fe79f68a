"""The policy document as YAML nodes: line numbers for every location, repeated keys as problems."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError, Problem, format_loc


def locate(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
    """Walk the YAML node tree along a pydantic error location.

    Returns the display location (union tags removed) and the 1-based line of
    the deepest node that exists.
    """
    node = root
    shown: list[Any] = []
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    found = (k, v)  # no break: of a repeated key, the last one is the value used
            if found is None:
                type_values = [v.value for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "type"]
                if type_values and str(part) in type_values:
                    continue  # discriminated-union tag, not a real key
                shown.append(part)
                node = None
                continue
            shown.append(part)
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            shown.append(part)
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            if not (shown and isinstance(part, str) and part.startswith(("function-", "list["))):
                shown.append(part)
    return tuple(shown), line


class PolicyLoader(yaml.SafeLoader):
    """A SafeLoader that records repeated mapping keys: plain YAML lets the last one win silently."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []  # (mapping, first key, repeat)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # only explicit scalar keys: a key that overrides a merged (<<) one is no repeat
            first = seen.setdefault(self.construct_object(key_node), key_node)
            if first is not key_node:
                self.duplicates.append((node, first, key_node))
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any, list[Problem]]:
    """(node tree, data, one problem per repeated key). Raises ConfigError on a YAML syntax error."""
    loader = PolicyLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [Problem(mark.line + 1 if mark else None, None, f"not valid YAML: {problem}")]) from None
    finally:
        loader.dispose()
    paths = node_paths(root)
    repeated = [
        Problem(again.start_mark.line + 1, format_loc(paths.get(id(mapping), ()) + (again.value,)),
                f"duplicate key {again.value!r} (first at line {first.start_mark.line + 1})")
        for mapping, first, again in loader.duplicates
    ]
    return root, data, repeated


def node_paths(root: yaml.Node | None) -> dict[int, tuple[Any, ...]]:
    """id(node) -> its location (``("rules", 0)``) for every node of the tree (aliases: the first path)."""
    paths: dict[int, tuple[Any, ...]] = {}
    todo: list[tuple[Any, tuple[Any, ...]]] = [(root, ())] if root is not None else []
    while todo:
        node, loc = todo.pop()
        if id(node) in paths:
            continue
        paths[id(node)] = loc
        if isinstance(node, yaml.MappingNode):
            todo.extend((v, loc + (k.value,)) for k, v in node.value if isinstance(k, yaml.ScalarNode))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((v, loc + (i,)) for i, v in enumerate(node.value))
    return paths


def find(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the key (or list item) at ``loc`` if the file has it, else None."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hits = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not hits:
                return None
            key, node = hits[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return None
    return line
