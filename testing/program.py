"""A random program of the checker: Python source over the public API, plus its input data.

A program is a list of steps, each one or more source lines that define one value
(``v7 = lm.softmax(v3, axis=1)``; a gradient step defines a loss function first), over inputs
with concrete data. It renders to a function ``program(v0, v1, ...)`` returning a tuple of
values. Inputs may be passed as non-contiguous views (``view``).
"""

from __future__ import annotations

import base64
import io
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

    # --- source --------------------------------------------------------------------------

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def body(self, indent: str = "    ") -> list[str]:
        return [indent + line for s in self.steps for line in s.lines]

    def source(self) -> str:
        """``program`` and ``grad_program`` as Python source (after ``HEADER``)."""
        args = ", ".join(self.input_names)
        outs = ", ".join(self.outputs) + ("," if len(self.outputs) == 1 else "")
        lines = [f"def program({args}):", *self.body(), f"    return ({outs})", ""]
        return "\n".join(lines)

    def function(self):
        """``program`` as a Python function (the source executed; tracebacks show it)."""
        ns: dict = {}
        code = compile(HEADER + self.source(), f"<lamina-fuzz {self.seed}:{self.index}>", "exec")
        exec(code, ns)
        return ns["program"]

    def arguments(self) -> list[np.ndarray]:
        return [i.as_argument() for i in self.inputs]

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
        need = set(self.outputs)
        for s in reversed(self.steps):
            if s.name in need:
                need.update(s.deps)
        steps = [s for s in self.steps if s.name in need]
        inputs = [i for i in self.inputs if i.name in need]
        return self.copy(steps=steps, inputs=inputs)


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
            "inputs": [{"name": i.name, "data": _npy_bytes(i.data), "view": i.view,
                        "lo": i.lo, "hi": i.hi, "min_abs": i.min_abs} for i in p.inputs],
            "steps": [{"name": s.name, "lines": s.lines, "deps": s.deps, "op": s.op}
                      for s in p.steps]}


def from_json(d: dict) -> Program:
    inputs = [Input(i["name"], npy(i["data"]), i["view"], i["lo"], i["hi"], i["min_abs"])
              for i in d["inputs"]]
    steps = [Step(s["name"], list(s["lines"]), list(s["deps"]), s["op"]) for s in d["steps"]]
    return Program(d["seed"], d["index"], inputs, steps, list(d["outputs"]), list(d["notes"]))
