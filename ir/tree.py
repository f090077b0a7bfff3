"""Nested output structures (tuples, lists, dicts of tensors) as flat leaves plus a JSON-able
description, so a compiled function returns what the Python function returned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def flatten(obj, is_leaf: Callable[[Any], bool] | None = None):
    """``(leaves, treedef)``; ``treedef`` is plain lists and strings (it goes into artifacts).

    >>> flatten((1, {"a": 2, "b": [3]}))
    ([1, 2, 3], ['tuple', [['leaf'], ['dict', [['a', ['leaf']], ['b', ['list', [['leaf']]]]]]]])
    """
    leaves: list = []

    def walk(x):
        if is_leaf is not None and is_leaf(x):
            leaves.append(x)
            return ["leaf"]
        if x is None:
            return ["none"]
        if isinstance(x, tuple) and not hasattr(x, "_fields"):
            return ["tuple", [walk(v) for v in x]]
        if isinstance(x, list):
            return ["list", [walk(v) for v in x]]
        if isinstance(x, dict):
            for k in x:
                if not isinstance(k, str):
                    raise TypeError(f"output dicts need string keys, got {k!r}")
            return ["dict", [[k, walk(v)] for k, v in x.items()]]
        leaves.append(x)
        return ["leaf"]

    tree = walk(obj)
    return leaves, tree


def unflatten(tree, leaves):
    """Rebuild the structure described by ``tree`` from ``leaves`` (the inverse of flatten)."""
    it = iter(leaves)

    def build(t):
        kind = t[0]
        if kind == "leaf":
            return next(it)
        if kind == "none":
            return None
        if kind == "tuple":
            return tuple(build(c) for c in t[1])
        if kind == "list":
            return [build(c) for c in t[1]]
        if kind == "dict":
            return {k: build(c) for k, c in t[1]}
        raise ValueError(f"bad tree node {t!r}")

    out = build(tree)
    rest = list(it)
    if rest:
        raise ValueError(f"{len(rest)} leaves left over after rebuilding the tree")
    return out


def count_leaves(tree) -> int:
    kind = tree[0]
    if kind == "leaf":
        return 1
    if kind == "none":
        return 0
    if kind == "dict":
        return sum(count_leaves(c) for _, c in tree[1])
    return sum(count_leaves(c) for c in tree[1])
