"""The text form of a Graph: one op per line, every value typed, the source line as a trailing
comment. ``lamina.ir.parse`` reads it back; printing the parsed graph gives the same text.

    graph @f(%x: f32[4,3], %w: f32[3,5]) {
      %0 = matmul(%x, %w) : f32[4,5]                              # demo.py:3
      %1 = tanh(%0) : f32[4,5]                                    # demo.py:3
      return %1
    }
"""

from __future__ import annotations

import json
import os
import re

from lamina.ir.dtypes import DType
from lamina.ir.errors import SourceLoc
from lamina.ir.graph import Graph, Node, Value
from lamina.ir.ops.registry import get as get_op

LOC_COLUMN = 64  # source comments start 2 columns after this (or after the text, if longer)


def format_attr(v) -> str:
    """One attribute value: ``true``, ``none``, ``3``, ``0.5``, ``"tanh"``, ``f32``, ``[0, 1]``."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "none"
    if isinstance(v, DType):
        return v.short
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back as the same float: 0.1, 1e-08, inf
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"attribute value {v!r} of type {type(v).__name__} cannot be printed")


def format_attrs(node: Node) -> str:
    shown = [k for k in node.attrs if k not in get_op(node.op).typed_attrs]
    if node.region is not None:
        shown = [k for k in shown if k != "name"]  # printed as @name
    if not shown:
        return ""
    return " {" + ", ".join(f"{k}={format_attr(node.attrs[k])}" for k in shown) + "}"


class Namer:
    """SSA names: parameters keep theirs, node results are numbered in graph order."""

    def __init__(self, graph: Graph):
        self.names: dict[Value, str] = {p: p.name for p in graph.params}
        for i, n in enumerate(graph.nodes):
            self.names[n] = str(i)

    def __call__(self, v: Value) -> str:
        try:
            return "%" + self.names[v]
        except KeyError:
            return "%<undefined>"


_PLAIN_FILE = re.compile(r'[^\s"():]+')


def format_loc(loc: SourceLoc) -> str:
    """``model.py:12`` or ``model.py:12 (grad)``; odd file names are quoted (JSON)."""
    name = os.path.basename(loc.file) or loc.file
    if not _PLAIN_FILE.fullmatch(name):
        name = json.dumps(name)
    text = f"{name}:{loc.line}"
    return f"{text} ({loc.note})" if loc.note else text


def _with_loc(text: str, loc: SourceLoc | None, indent: str) -> str:
    if loc is None:
        return text
    # NOTE: comments line up at one absolute column whatever the nesting depth.
    return text.ljust(LOC_COLUMN - len(indent)) + f"  # {format_loc(loc)}"


def format_node(node: Node, name, indent: str = "", locations: bool = True) -> str:
    """One node's line (a kernel node's header line: ``... = kernel @name(...) : t {``)."""
    args = ", ".join(name(v) for v in node.inputs)
    if node.region is not None:
        text = (f"{name(node)} = {node.op} @{node.attrs['name']}({args}){format_attrs(node)} "
                f": {node.type} {{")
    else:
        text = f"{name(node)} = {node.op}({args}){format_attrs(node)} : {node.type}"
    return _with_loc(text, node.loc if locations else None, indent)


def _body(graph: Graph, name: Namer, indent: str, locations: bool) -> list[str]:
    lines = []
    for n in graph.nodes:
        lines.append(indent + format_node(n, name, indent, locations))
        if n.region is not None:
            lines.extend(_region(n.region, indent + "  ", locations))
            lines.append(indent + "}")
    return lines


def _region(region: Graph, indent: str, locations: bool) -> list[str]:
    name = Namer(region)
    params = ", ".join(f"%{p.name}: {p.type}" for p in region.inputs)
    lines = [f"{indent}^({params}):"]
    lines.extend(_body(region, name, indent + "  ", locations))
    lines.append(f"{indent}  yield {', '.join(name(v) for v in region.outputs)}")
    return lines


def print_graph(graph: Graph, indent: str = "  ", locations: bool = True) -> str:
    """The text form of ``graph``; ``locations=False`` leaves out the source comments (what
    the compile cache keys on: moving code does not change what it computes)."""
    name = Namer(graph)
    sig = ", ".join(f"%{p.name}: {p.type}" for p in graph.inputs)
    head = f"graph @{graph.name}({sig})"
    if graph.state:
        head += " state(" + ", ".join(f"%{p.name}: {p.type}" for p in graph.state) + ")"
    lines = [head + " {"]
    lines.extend(_body(graph, name, indent, locations))
    for p in graph.state:  # updates print in state order
        if p.name in graph.updates:
            lines.append(f"{indent}update %{p.name} = {name(graph.updates[p.name])}")
    ret = ", ".join(name(v) for v in graph.outputs)
    lines.append(f"{indent}return {ret}".rstrip())
    lines.append("}")
    return "\n".join(lines) + "\n"
