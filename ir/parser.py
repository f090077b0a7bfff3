"""Reads the text form back into a Graph (the inverse of ``ir.printer``).

Every node goes through ``Builder.emit``, so a parsed graph is type-checked: an annotation that
disagrees with the op's type rule, an unknown op or a use before definition is a ParseError
naming line and column. ``#`` comments are ignored, except a trailing ``# file.py:12`` that gives
a node its source location.
"""

from __future__ import annotations

import json
import re

from lamina.ir import dtypes as dt
from lamina.ir.builder import Builder
from lamina.ir.errors import LaminaError, ParseError, SourceLoc
from lamina.ir.graph import Graph, Value
from lamina.ir.ops.registry import get as get_op
from lamina.ir.types import TensorType, TupleType

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<symbol>@[A-Za-z0-9_.]+)
  | (?P<number>-?(?:inf\b|nan\b|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\]{},=:^])
""", re.VERBOSE)

_LOC = re.compile(r'^#\s*(?:(?P<quoted>"(?:[^"\\]|\\.)*")|(?P<file>[^\s"():]+)):(?P<line>\d+)'
                  r"(?:\s+\((?P<note>[^)]*)\))?\s*$")


class _Token:
    __slots__ = ("col", "kind", "line", "text")

    def __init__(self, kind, text, line, col):
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def __repr__(self):
        return f"{self.kind}:{self.text!r}@{self.line}:{self.col}"


def _tokenize(text: str) -> list[_Token]:
    tokens, pos, line, line_start = [], 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            col = pos - line_start + 1
            raise _error(text, line, col, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind == "newline":
            line, line_start = line + 1, m.end()
        elif kind != "ws":
            tokens.append(_Token(kind, m.group(), line, pos - line_start + 1))
        pos = m.end()
    tokens.append(_Token("eof", "", line, pos - line_start + 1))
    return tokens


def _error(text: str, line: int, col: int, message: str) -> ParseError:
    lines = text.splitlines()
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    return ParseError(f"line {line}, column {col}: {message}\n  {src}\n  {' ' * (col - 1)}^")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    # --- token helpers ---------------------------------------------------------------------

    def peek(self, skip_comments=True) -> _Token:
        while skip_comments and self.toks[self.i].kind == "comment":
            self.i += 1
        return self.toks[self.i]

    def next(self) -> _Token:
        t = self.peek()
        self.i += 1
        return t

    def fail(self, tok: _Token, message: str) -> ParseError:
        return _error(self.text, tok.line, tok.col, message)

    def expect(self, kind: str, text: str | None = None) -> _Token:
        t = self.next()
        if t.kind != kind or (text is not None and t.text != text):
            want = repr(text) if text else kind
            got = repr(t.text) if t.text else "end of input"
            raise self.fail(t, f"expected {want}, got {got}")
        return t

    def accept(self, kind: str, text: str | None = None) -> _Token | None:
        t = self.peek()
        if t.kind == kind and (text is None or t.text == text):
            self.i += 1
            return t
        return None

    # --- grammar ---------------------------------------------------------------------------

    def graph(self) -> Graph:
        self.expect("ident", "graph")
        name = self.expect("symbol").text[1:]
        b = Builder(name)
        self.env: dict[str, Value] = {}
        for pname, ptype, tok in self.params():
            self.define(pname, b.add_input(pname, ptype), tok)
        if self.accept("ident", "state"):
            for pname, ptype, tok in self.params():
                self.define(pname, b.add_state(pname, ptype), tok)
        self.expect("punct", "{")
        updates, outputs = {}, None
        while outputs is None:
            t = self.peek()
            if t.kind == "value":
                self.node(b)
            elif t.kind == "ident" and t.text == "update":
                self.next()
                target = self.expect("value")
                self.expect("punct", "=")
                state = {p.name: p for p in b.state}
                name = target.text[1:]
                if name not in state:
                    raise self.fail(target, f"update of {target.text}, which is not state")
                if name in updates:
                    raise self.fail(target, f"{target.text} is updated twice")
                value_tok = self.expect("value")
                value = self.use(value_tok)
                if value.type != state[name].type:
                    raise self.fail(value_tok, f"update of {target.text}: {value.type} does not "
                                               f"match the state's {state[name].type}")
                updates[name] = value
            elif t.kind == "ident" and t.text == "return":
                self.next()
                outputs = self.operands(end_line=t.line)
            else:
                raise self.fail(t, f"expected a statement, got {t.text!r}")
        self.expect("punct", "}")
        if self.peek().kind != "eof":
            raise self.fail(self.peek(), "text after the end of the graph")
        return b.build(outputs, updates)

    def params(self):
        self.expect("punct", "(")
        out = []
        if not self.accept("punct", ")"):
            while True:
                tok = self.expect("value")
                if not re.match(r"%[A-Za-z_]", tok.text):
                    raise self.fail(tok, f"parameter name {tok.text} must start with a letter "
                                         "or '_' (%<number> names a node)")
                self.expect("punct", ":")
                out.append((tok.text[1:], self.type(), tok))
                if self.accept("punct", ")"):
                    break
                self.expect("punct", ",")
        return out

    def type(self) -> TensorType | TupleType:
        if self.accept("punct", "("):  # a loop's result: (t0, t1, ...)
            types = []
            if not self.accept("punct", ")"):
                while True:
                    types.append(self.type())
                    if self.accept("punct", ")"):
                        break
                    self.expect("punct", ",")
            return TupleType(types)
        tok = self.expect("ident")
        try:
            d = dt.dtype(tok.text)
        except LaminaError:
            raise self.fail(tok, f"unknown dtype {tok.text!r}") from None
        self.expect("punct", "[")
        dims = []
        if not self.accept("punct", "]"):
            while True:
                n = self.expect("number")
                if not n.text.isdigit():
                    raise self.fail(n, f"a dimension must be a non-negative integer, got {n.text}")
                dims.append(int(n.text))
                if self.accept("punct", "]"):
                    break
                self.expect("punct", ",")
        return TensorType(dims, d)

    def define(self, name: str, value: Value, tok: _Token):
        if name in self.env:
            raise self.fail(tok, f"%{name} is defined twice")
        self.env[name] = value

    def use(self, tok: _Token) -> Value:
        try:
            return self.env[tok.text[1:]]
        except KeyError:
            raise self.fail(tok, f"{tok.text} is used before it is defined") from None

    def operands(self, end_line: int | None = None) -> list[Value]:
        out = []
        t = self.peek()
        if t.kind != "value" or (end_line is not None and t.line != end_line):
            return out
        out.append(self.use(self.next()))
        while self.accept("punct", ","):
            out.append(self.use(self.expect("value")))
        return out

    def node(self, b: Builder):
        target = self.next()
        self.expect("punct", "=")
        op_tok = self.expect("ident")
        try:
            opdef = get_op(op_tok.text)
        except LaminaError as e:
            raise self.fail(op_tok, e.message) from None
        attrs = {}
        if opdef.region:  # kernel @name(...) : type { ^(params): ... yield %v }
            attrs["name"] = self.expect("symbol").text[1:]
        self.expect("punct", "(")
        inputs = [] if self.peek().kind == "punct" and self.peek().text == ")" else self.operands()
        self.expect("punct", ")")
        if self.accept("punct", "{"):  # a region op's body comes after its type
            attrs.update(self.attrs())
        self.expect("punct", ":")
        type_tok = self.peek()
        rtype = self.type()
        region = None
        if opdef.region:
            self.expect("punct", "{")
            loc = self.trailing_loc(type_tok.line)
            region = self.region(attrs["name"])
        else:
            loc = self.trailing_loc(type_tok.line)
        if "dtype" in opdef.typed_attrs:
            attrs["dtype"] = rtype.dtype
        if "shape" in opdef.typed_attrs:
            attrs["shape"] = rtype.shape
        try:
            node = b.emit(op_tok.text, inputs, attrs, loc=loc, type=rtype, region=region)
        except LaminaError as e:
            raise self.fail(op_tok, e.message) from None
        self.define(target.text[1:], node, target)

    def region(self, name: str) -> Graph:
        """``^(%a: t, ...): <nodes> yield %v }``, in a scope of its own (a region reads only
        its parameters)."""
        outer, self.env = self.env, {}
        b = Builder(name)
        self.expect("punct", "^")
        for pname, ptype, tok in self.params():
            self.define(pname, b.add_input(pname, ptype), tok)
        self.expect("punct", ":")
        while True:
            t = self.peek()
            if t.kind == "value":
                self.node(b)
            elif t.kind == "ident" and t.text == "yield":
                self.next()
                outputs = self.operands(end_line=t.line)
                break
            else:
                raise self.fail(t, f"expected a statement or yield in the region of @{name}, "
                                   f"got {t.text!r}")
        self.expect("punct", "}")
        self.env = outer
        return b.build(outputs)

    def attrs(self) -> dict:
        out = {}
        if self.accept("punct", "}"):
            return out
        while True:
            key = self.expect("ident")
            self.expect("punct", "=")
            if key.text in out:
                raise self.fail(key, f"attribute {key.text} is given twice")
            out[key.text] = self.attr_value()
            if self.accept("punct", "}"):
                return out
            self.expect("punct", ",")

    def attr_value(self):
        t = self.next()
        if t.kind == "number":
            if re.fullmatch(r"-?\d+", t.text):
                return int(t.text)
            return float(t.text)
        if t.kind == "string":
            return json.loads(t.text)
        if t.kind == "ident":
            consts = {"true": True, "false": False, "none": None}
            if t.text in consts:
                return consts[t.text]
            try:
                return dt.dtype(t.text)
            except LaminaError:
                raise self.fail(t, f"unknown attribute value {t.text!r}") from None
        if t.kind == "punct" and t.text == "[":
            items = []
            if self.accept("punct", "]"):
                return ()
            while True:
                items.append(self.attr_value())
                if self.accept("punct", "]"):
                    return tuple(items)
                self.expect("punct", ",")
        raise self.fail(t, f"expected an attribute value, got {t.text!r}")

    def trailing_loc(self, line: int) -> SourceLoc | None:
        t = self.toks[self.i]
        if t.kind == "comment" and t.line == line:
            self.i += 1
            m = _LOC.match(t.text)
            if m:
                file = json.loads(m["quoted"]) if m["quoted"] else m["file"]
                return SourceLoc(file, int(m["line"]), m["note"] or "")
        return None


def parse(text: str) -> Graph:
    """Parse the text form of a graph.

    >>> g = parse('''graph @f(%x: f32[3]) {
    ...   %0 = exp(%x) : f32[3]
    ...   return %0
    ... }''')
    >>> g.nodes[0].op, g.outputs[0].type
    ('exp', f32[3])
    """
    return _Parser(text).graph()
