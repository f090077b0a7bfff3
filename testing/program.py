"""A random program of the checker: Python source over the public API, plus its input data.

A program is a list of steps, each one or more source lines that define one value
(``v7 = lm.softmax(v3, axis=1)``; a gradient step defines a loss function first), over inputs
with concrete data. It renders to a function ``program(v0, v1, ...)`` returning a tuple of
values. Inputs may be passed as non-contiguous views (``view``).
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field, replace

import numpy as np

HEADER = "import numpy as np\nimport lamina as lm\nfrom lamina.frontend.ops import apply\n"
VIEWS = ("contig", "transposed", "strided", "offset", "reversed")


@dataclass
class Input:
    name: str
    data: np.ndarray
    view: str = "contig"  # how the array is passed (see ``as_argument``)
    lo: float | None = None  # the range its values were drawn from (for regenerating them)
    hi: float | None = None
    min_abs: float = 0.0

    def as_argument(self) -> np.ndarray:
        """The data as the view the program is called with: same values, other strides."""
        a = self.data
        if self.view == "transposed" and a.ndim >= 2:
            return np.ascontiguousarray(a.T).T
        if self.view == "strided" and a.ndim >= 1:
            base = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
            base[..., ::2] = a
            return base[..., ::2]
        if self.view == "offset" and a.size:
            base = np.zeros(a.size + 1, a.dtype)
            base[1:] = a.reshape(-1)
            return base[1:].reshape(a.shape)
        if self.view == "reversed" and a.ndim >= 1:
            return np.ascontiguousarray(a[::-1])[::-1]
        return a


@dataclass
class Step:
    name: str
    lines: list[str]  # source lines defining ``name`` (the last one assigns it)
    deps: list[str]  # the values its lines read
    op: str  # the op it was made for ("grad" for a gradient step)


@dataclass
class Program:
    seed: int
    index: int
    inputs: list[Input]
    steps: list[Step]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)
    # A training program: these inputs are ``lm.nn.Parameter``s (state, not arguments) and the
    # program ends with ``opt.minimize(<loss>)``; ``optimizer`` is the optimizer's constructor
    # call with ``{params}`` for the parameter list, ``loss`` the loss expression.
    params: list[str] = field(default_factory=list)
    optimizer: str = ""
    loss: str = ""

    # --- source --------------------------------------------------------------------------

    @property
    def input_names(self) -> list[str]:
        """The function's arguments (inputs that are not parameters)."""
        return [i.name for i in self.inputs if i.name not in self.params]

    @property
    def training(self) -> bool:
        return bool(self.params and self.optimizer)

    def body(self, indent: str = "    ") -> list[str]:
        return [indent + line for s in self.steps for line in s.lines]

    def source(self) -> str:
        """The program as Python source (after ``HEADER``): the parameters and optimizer of
        a training program, then ``def program(...)``."""
        args = ", ".join(self.input_names)
        outs = ", ".join(self.outputs) + ("," if len(self.outputs) == 1 else "")
        lines = []
        if self.training:
            for n in self.params:
                lines.append(f"{n} = lm.nn.Parameter(_init[{n!r}].copy(), name={n!r})")
            lines += ["opt = " + self.optimizer.format(params="[" + ", ".join(self.params)
                                                         + "]"), "", ""]
        lines += [f"def program({args}):", *self.body()]
        if self.training:
            lines.append(f"    opt.minimize({self.loss})")
        lines += [f"    return ({outs})", ""]
        return "\n".join(lines)

    def namespace(self) -> dict:
        """What the source reads besides lm and np: the parameters' initial values."""
        return {"_init": {i.name: i.data.copy() for i in self.inputs if i.name in self.params}}

    def function(self):
        """``program`` as a Python function (the source executed; tracebacks show it). Each
        call makes fresh parameters and optimizer state."""
        ns = self.namespace()
        code = compile(HEADER + self.source(), f"<lamina-fuzz {self.seed}:{self.index}>", "exec")
        exec(code, ns)
        return ns["program"]

    def arguments(self) -> list[np.ndarray]:
        return [i.as_argument() for i in self.inputs if i.name not in self.params]

    def argument_inputs(self) -> list[Input]:
        return [i for i in self.inputs if i.name not in self.params]

    def copy(self, **changes) -> Program:
        return replace(self, **changes)

    # --- structure -----------------------------------------------------------------------

    def users(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for s in self.steps:
            for d in s.deps:
                out.setdefault(d, []).append(s.name)
        return out

    def live(self) -> Program:
        """Without the steps and inputs that no output needs."""
        need = set(self.outputs) | set(re.findall(r"\bv\d+\b", self.loss))
        for s in reversed(self.steps):
            if s.name in need:
                need.update(s.deps)
        steps = [s for s in self.steps if s.name in need]
        inputs = [i for i in self.inputs if i.name in need]
        params = [n for n in self.params if n in need]
        return self.copy(steps=steps, inputs=inputs, params=params,
                         optimizer=self.optimizer if params else "")


# --- arrays in a repro file -------------------------------------------------------------------


def array_literal(a: np.ndarray) -> str:
    """Source that rebuilds ``a`` exactly: a literal for small arrays, base64 .npy otherwise."""
    if a.size <= 64 and (a.dtype.kind != "f" or np.isfinite(a).all()):
        # float32 values print as the float64 that equals them: exact, read back exactly
        values = a.astype(np.float64).tolist() if a.dtype.kind == "f" else a.tolist()
        return f"np.array({values!r}, dtype={a.dtype.name!r}).reshape({a.shape})"
    return f"_npy({_npy_bytes(a)!r})"


def _npy_bytes(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def npy(b64: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def to_json(p: Program) -> dict:
    """A JSON-able description (to hand a program to a subprocess)."""
    return {"seed": p.seed, "index": p.index, "outputs": p.outputs, "notes": p.notes,
            "params": p.params, "optimizer": p.optimizer, "loss": p.loss,
            "inputs": [{"name": i.name, "data": _npy_bytes(i.data), "view": i.view,
                        "lo": i.lo, "hi": i.hi, "min_abs": i.min_abs} for i in p.inputs],
            "steps": [{"name": s.name, "lines": s.lines, "deps": s.deps, "op": s.op}
                      for s in p.steps]}


def from_json(d: dict) -> Program:
    inputs = [Input(i["name"], npy(i["data"]), i["view"], i["lo"], i["hi"], i["min_abs"])
              for i in d["inputs"]]
    steps = [Step(s["name"], list(s["lines"]), list(s["deps"]), s["op"]) for s in d["steps"]]
    return Program(d["seed"], d["index"], inputs, steps, list(d["outputs"]), list(d["notes"]),
                   list(d["params"]), d["optimizer"], d["loss"])
