"""Random programs from ``(seed, index)`` alone, driven by the op registry's domains.

A program grows one step at a time inside an open trace: the generator picks an op (or a
gradient step), operands that fit the op's domain (values already in the program, checked
against their actual data, or fresh inputs and literals), spells the call in the public API
(``testing/spell.py``), runs the line on the traced values and evaluates the new nodes with the
reference interpreter. A step that the domain's checks or the reference reject is rolled back.
So every program is valid by construction and its values stay finite and moderate.

Shapes come from a small per-program vocabulary of sizes (0 and 1 sometimes, primes, powers
of two, sometimes a long row), so equal-sized axes (square matrices, n x n x n) are common.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import lamina as lm
from lamina.frontend.ops import apply
from lamina.frontend.parameter import Parameter
from lamina.frontend.tensor import Tensor
from lamina.frontend.trace import TraceContext
from lamina.frontend.trace import _local as _trace_local
from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError
from lamina.ir.interpret import eval_node
from lamina.ir.ops import all_ops
from lamina.ir.ops.domain import Operand
from lamina.ir.types import TensorType
from lamina.testing import spell
from lamina.testing.program import HEADER, VIEWS, Input, Program, Step

SMALL_SIZES = (1, 2, 3, 4, 5, 7, 8, 16)
SIZES = (1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 32, 64, 127)
LONG_ROWS = (257, 1000, 1024, 4097)
MAX_INPUTS = 6
MAX_MAGNITUDE = 1e5  # larger values would make every later float32 comparison meaningless
GRAD_WEIGHT = 0.08  # share of steps that are gradients (lm.grad inside the program)
LOOP_WEIGHT = 0.06  # share of steps that are loops (lm.scan, lm.fori_loop, lm.while_loop)
TRAIN_SHARE = 0.3  # share of programs that are training steps (parameters + opt.minimize)
OPTIMIZERS = ("lm.optim.SGD({params}, lr=0.1)",
              "lm.optim.SGD({params}, lr=0.05, momentum=0.9)",
              "lm.optim.SGD({params}, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)",
              "lm.optim.Adam({params}, lr=0.01)",
              "lm.optim.AdamW({params}, lr=0.01)")


@dataclass
class Val:
    """A value of the program under construction."""

    name: str
    tensor: Tensor
    array: np.ndarray  # its reference value
    inputs: frozenset  # the names of the inputs it depends on
    step: bool  # made by a step (not an input)


def kind(d) -> str:
    return {"f": "f", "i": "i", "u": "i", "b": "b"}[np.dtype(d).kind]


class Gen:
    """The generator context the domains' samplers use (``rng``, ``dim()``, ``shape()``)."""

    def __init__(self, seed: int, index: int, small: bool = False):
        self.seed, self.index, self.small = seed, index, small
        self.rng = rng = np.random.default_rng([seed, index])
        self.max_elems = 2048 if small else 1 << 16
        pool = SMALL_SIZES if small else SIZES
        vocab = [int(x) for x in rng.choice(pool[1:], size=int(rng.integers(2, 5)))]
        if not small and rng.random() < 0.15:
            vocab.append(int(rng.choice(LONG_ROWS)))
        if rng.random() < 0.12:
            vocab.append(0)
        self.vocab = vocab

    def dim(self) -> int:
        if self.rng.random() < 0.12:
            return 1
        return int(self.rng.choice(self.vocab))

    def shape(self, rank: int | None = None) -> tuple[int, ...]:
        if rank is None:
            rank = int(self.rng.choice(5, p=[0.1, 0.25, 0.35, 0.2, 0.1]))
        dims = [self.dim() for _ in range(rank)]
        while math.prod(dims) > self.max_elems:
            big = int(np.argmax(dims))
            smaller = [d for d in self.vocab if d < dims[big]] or [1]
            dims[big] = int(self.rng.choice(smaller))
        return tuple(dims)

    def draw(self, spec: Operand, shape, dtype) -> np.ndarray:
        """Values of ``dtype`` in the operand's range (floats default to [-2, 2])."""
        rng = self.rng
        if dtype.kind == "b":
            return rng.random(shape) < 0.5
        lo = -2.0 if spec.lo is None else spec.lo
        hi = max(lo + 1.0, 2.0) if spec.hi is None else spec.hi
        if dtype.kind == "f":
            x = rng.uniform(lo, hi, shape)
            if spec.min_abs:
                mag = rng.uniform(spec.min_abs, max(abs(lo), abs(hi), spec.min_abs + 1), shape)
                x = np.where(x < 0, -mag, mag)
            return x.astype(dtype)
        lo_i, hi_i = (-3 if spec.lo is None else int(spec.lo)), (3 if spec.hi is None
                                                                  else int(spec.hi))
        x = rng.integers(lo_i, hi_i + 1, shape)
        if spec.min_abs:
            x = np.where(x == 0, 1, x)
        return x.astype(dtype)


def fits(a: np.ndarray, spec: Operand) -> bool:
    """Does array ``a`` satisfy the operand's kinds and value range?"""
    if kind(a.dtype) not in spec.kinds:
        return False
    if spec.shape is not None and a.shape != spec.shape:
        return False
    if spec.ranks is not None and a.ndim not in spec.ranks:
        return False
    if a.dtype.kind == "b" or a.size == 0:
        return True
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return False
    if spec.lo is not None and a.min() < spec.lo:
        return False
    if spec.hi is not None and a.max() > spec.hi:
        return False
    return not (spec.min_abs and np.abs(a).min() < spec.min_abs)


def _pick_dtype(rng, kinds: str):
    k = kinds[int(rng.integers(len(kinds)))]
    if k == "f":
        return np.dtype(np.float32 if rng.random() < 0.8 else np.float64)
    if k == "i":
        return np.dtype(np.int64 if rng.random() < 0.6 else np.int32)
    return np.dtype(np.bool_)


class Rejected(Exception):
    """This step does not fit; try another."""


class Generator:
    def __init__(self, seed: int, index: int, small: bool = False):
        self.g = Gen(seed, index, small)
        self.rng = self.g.rng
        self.inputs: list[Input] = []
        self.steps: list[Step] = []
        self.pool: list[Val] = []
        self.counter = 0
        self.env: dict = {}
        self.ns: dict = {}
        self.ops = [o for o in all_ops() if o.domain is not None and o.domain.callable]
        self.broken: str | None = None  # an internal error met while building (see build)
        self.training = self.rng.random() < TRAIN_SHARE
        self.params: list[str] = []  # inputs that are lm.nn.Parameters (training programs)

    # --- names and values ----------------------------------------------------------------

    def fresh_name(self) -> str:
        self.counter += 1
        return f"v{self.counter - 1}"

    def add_input(self, spec: Operand, shape, dtype) -> Val:
        name = self.fresh_name()
        data = self.g.draw(spec, shape, dtype)
        view = "contig" if self.rng.random() < 0.6 else str(self.rng.choice(VIEWS[1:]))
        self.inputs.append(Input(name, data, view, spec.lo, spec.hi, spec.min_abs))
        if self.training and dtype.kind == "f" and len(self.params) < 3 and \
                self.rng.random() < 0.7:
            # a parameter: state the program reads and the optimizer updates
            var = Parameter(data.copy(), name=name)
            t = self.ctx.read(var)
            self.params.append(name)
            self.ns[name] = var
        else:
            t = self.ctx.builder.var(self.ctx.builder.add_input(name,
                                                                TensorType(shape, dt.dtype(dtype))))
            self.ns[name] = t
        self.env[t.value] = data
        v = Val(name, t, data, frozenset([name]), False)
        self.pool.append(v)
        return v

    def literal(self, spec: Operand, shape, dtype,
                tensor: bool = False) -> tuple[str, TensorType] | None:
        """A literal operand: a Python number, a small numpy array, or lm.zeros/ones/full
        (only the last where a method is called on it: ``tensor``)."""
        data = self.g.draw(spec, shape, dtype)
        if tensor:
            v = data.reshape(-1)[0].item() if data.size else 0
            t = TensorType(shape, dt.dtype(dtype))
            return f"lm.full({spell.fmt(shape)}, {spell.fmt(v)}, {spell.fmt(t.dtype)})", t
        if not shape:
            x = data.item()
            if isinstance(x, float):
                return repr(x), TensorType((), dt.float32)
            return repr(x), TensorType((), dt.bool_ if isinstance(x, bool) else dt.int64)
        t = TensorType(shape, dt.dtype(dtype))
        if data.size and self.rng.random() < 0.4 and spec.min_abs == 0 and spec.lo is None:
            v = 0 if dtype.kind == "b" else data.reshape(-1)[0].item()
            v = bool(v) if dtype.kind == "b" else v
            return f"lm.full({spell.fmt(shape)}, {spell.fmt(v)}, {spell.fmt(t.dtype)})", t
        if data.size > 12:
            return None
        values = data.astype(np.float64).tolist() if dtype.kind == "f" else data.tolist()
        return f"np.array({values!r}, dtype={dtype.name!r})", t

    def pick(self, spec: Operand, fresh_ok: bool = True, first: bool = False):
        """An operand for ``spec``: (source expression, type, Val or None); a literal ``first``
        operand is a tensor (``lm.full``), as methods are called on it."""
        cands = [v for v in self.pool if fits(v.array, spec)]
        rng = self.rng
        if cands and (not fresh_ok or rng.random() > 0.2):
            w = np.arange(1, len(cands) + 1, dtype=float)
            v = cands[int(rng.choice(len(cands), p=w / w.sum()))]
            return v.name, v.tensor.type, v
        if not fresh_ok:
            return None
        if spec.shape is not None:
            shape = spec.shape
        elif spec.ranks is not None:
            shape = self.g.shape(rank=int(rng.choice(spec.ranks)))
        else:
            shape = self.g.shape()
        if math.prod(shape) > self.g.max_elems:
            raise Rejected(f"a fresh operand of shape {shape} is too large")
        dtype = _pick_dtype(rng, spec.kinds)
        if len(self.inputs) >= MAX_INPUTS or rng.random() < 0.25:
            lit = self.literal(spec, shape, dtype, tensor=first)
            if lit is not None:
                return lit[0], lit[1], None
            if len(self.inputs) >= MAX_INPUTS:
                return None
        v = self.add_input(spec, shape, dtype)
        return v.name, v.tensor.type, v

    # --- steps ---------------------------------------------------------------------------

    def op_step(self, opdef) -> Step:
        d = self.g
        dom = opdef.domain
        args, types, vals = [], [], []
        if dom.first is not None:
            got = self.pick(dom.first, first=True)
            if got is None:
                raise Rejected("no first operand")
            args.append(got[0]), types.append(got[1]), vals.append(got[2])
        attrs = dom.attrs(d, types[0] if types else None) if dom.attrs else {}
        if attrs is None:
            raise Rejected("attributes")
        if dom.rest is not None:
            for spec in dom.rest(d, types[0], attrs):
                got = self.pick(spec)
                if got is None:
                    raise Rejected("no operand")
                args.append(got[0]), types.append(got[1]), vals.append(got[2])
        name = self.fresh_name()
        expr = spell.render(opdef.name, args, attrs, types, self.rng)
        deps = [v.name for v in vals if v is not None]
        return Step(name, [f"{name} = {expr}"], list(dict.fromkeys(deps)), opdef.name)

    def grad_step(self) -> Step:
        """``vN = lm.grad(fN, argnums=k)(inputs...)``: fN replays what a value needs and
        returns a scalar loss of it."""
        cands = [v for v in self.pool if v.step and v.array.dtype.kind == "f"
                 and any(self.input_of(n).data.dtype.kind == "f" for n in v.inputs)]
        if not cands:
            raise Rejected("nothing to differentiate")
        v = cands[int(self.rng.integers(len(cands)))]
        params = [i.name for i in self.inputs if i.name in v.inputs]
        wrt = [k for k, n in enumerate(params) if self.input_of(n).data.dtype.kind == "f"]
        k = wrt[int(self.rng.integers(len(wrt)))]
        losses = [f"{v.name}.sum()", f"({v.name} * {v.name}).sum()"]
        if v.array.size:
            losses += [f"lm.tanh({v.name}).mean()", f"{v.name}.max()"]
        loss = losses[int(self.rng.integers(len(losses)))]
        name = self.fresh_name()
        body = [line for s in self.closure(v.name) for line in s.lines]
        lines = [f"def f_{name}({', '.join(params)}):", *["    " + b for b in body],
                 f"    return {loss}",
                 f"{name} = lm.grad(f_{name}, argnums={k})({', '.join(params)})"]
        return Step(name, lines, params, "grad")

    def loop_step(self) -> Step:
        """A loop around the steps that compute a float value ``v``: their lines replayed in
        the body, whose carry accumulates ``v`` (``c * 0.5 + v``). ``lm.scan`` feeds one of
        v's inputs per step from a new stacked input (step 0: the input's own data, the
        others drawn from its range), yields ``v`` or the step's incoming carry per step,
        and may run in reverse; ``lm.fori_loop`` adds its index;
        ``lm.while_loop`` counts with an integer carry (forward only: its result is read
        through ``lm.stop_gradient``, which the gradient checks then do not cross)."""
        rng = self.rng
        cands = [v for v in self.pool if v.step and v.array.dtype.kind == "f"]
        if not cands:
            raise Rejected("nothing to loop over")
        v = cands[int(rng.integers(len(cands)))]
        loop = ("scan", "fori_loop", "while_loop")[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        body = [line for s in self.closure(v.name) for line in s.lines]
        deps = [i.name for i in self.inputs if i.name in v.inputs]
        name = self.fresh_name()
        t = v.tensor.type
        zeros = f"lm.zeros({spell.fmt(t.shape)}, {spell.fmt(t.dtype)})"
        n = int(rng.choice([0, 1, 2, 3, 4], p=[0.05, 0.2, 0.35, 0.25, 0.15]))
        ck = ", checkpoint=True" if rng.random() < 0.3 else ""
        indent = ["    " + b for b in body]
        if loop == "scan":
            sliced = [d for d in deps if d not in self.params]
            if not sliced:
                raise Rejected("no input to feed per step")
            a = sliced[int(rng.integers(len(sliced)))]
            src = self.input_of(a)
            spec = Operand(kind(src.data.dtype), src.lo, src.hi, src.min_abs)
            steps = [src.data] + [self.g.draw(spec, src.data.shape, src.data.dtype)
                                  for _ in range(max(0, n - 1))]
            data = np.stack(steps)[:n] if n else np.zeros((0,) + src.data.shape,
                                                          src.data.dtype)
            if data.size > self.g.max_elems:
                raise Rejected("stacked input too large")
            xs = self.add_stacked(a, data)
            rev = ", reverse=True" if rng.random() < 0.3 else ""
            pick = int(rng.integers(2))
            # the per-step output: v, or the carry each step started from (what a backward
            # pass saves of an RNN's state; llvm keeps such a carry in the stacked output)
            y = "c" if rng.random() < 0.3 else v.name
            lines = [f"def f_{name}(c, {a}):", *indent,
                     f"    return c * 0.5 + {v.name}, {y}",
                     f"{name} = lm.scan(f_{name}, {zeros}, {xs}{rev}{ck})[{pick}]"]
            deps = [d for d in deps if d != a] + [xs]
        elif loop == "fori_loop":
            lo = int(rng.integers(-2, 3))
            lines = [f"def f_{name}(i, c):", *indent,
                     f"    return c * 0.5 + {v.name} + i.astype(c.dtype)",
                     f"{name} = lm.fori_loop({lo}, {lo + n}, f_{name}, {zeros}{ck})"]
        else:
            lines = [f"def f_{name}(c):", "    k, acc = c", *indent,
                     f"    return k + 1, acc * 0.5 + {v.name}",
                     f"{name} = lm.stop_gradient(lm.while_loop(lambda c: c[0] < {n}, "
                     f"f_{name}, (0, {zeros}))[1])"]
        return Step(name, lines, deps, loop)

    def add_stacked(self, like: str, data: np.ndarray) -> str:
        """A new input holding ``data`` (per-step values of input ``like``)."""
        src = self.input_of(like)
        name = self.fresh_name()
        view = "contig" if self.rng.random() < 0.6 else str(self.rng.choice(VIEWS[1:]))
        self.inputs.append(Input(name, data, view, src.lo, src.hi, src.min_abs))
        t = self.ctx.builder.var(self.ctx.builder.add_input(
            name, TensorType(data.shape, dt.dtype(data.dtype))))
        self.ns[name] = t
        self.env[t.value] = data
        self.pool.append(Val(name, t, data, frozenset([name]), False))
        return name

    def input_of(self, name: str) -> Input:
        return next(i for i in self.inputs if i.name == name)

    def closure(self, name: str) -> list[Step]:
        need, out = {name}, []
        for s in reversed(self.steps):
            if s.name in need:
                out.append(s)
                need.update(s.deps)
        return out[::-1]

    def run_step(self, step: Step) -> Val:
        """Trace the step's lines and evaluate its value; Rejected if the reference refuses."""
        b = self.ctx.builder
        start = len(b.nodes)
        try:
            exec("\n".join(step.lines), self.ns)
        except LaminaError as e:
            raise Rejected(f"trace: {e}") from None
        t = self.ns.get(step.name)
        if not isinstance(t, Tensor):
            raise Rejected(f"not a tensor: {type(t).__name__}")
        new = b.nodes[start:]
        for p in b.state:  # state the step read (lamina's global random key): its value now
            if p not in self.env:
                self.env[p] = self.ctx.variables[p.name].numpy()
        if any(isinstance(n.type, TensorType) and n.type.size > 4 * self.g.max_elems
               for n in new):
            raise Rejected("a value too large")  # before anything is computed
        try:
            if step.op == "grad":
                value = self.evaluate_grad(step)
                self.env[t.value] = value
            else:
                for n in new:
                    self.env[n] = eval_node(n, [self.env[v] for v in n.inputs])
                value = self.env[t.value]
        except LaminaError as e:
            raise Rejected(f"reference: {e}") from None
        self.sane(value)
        deps = frozenset().union(*[self.val(n).inputs for n in step.deps]) if step.deps \
            else frozenset()
        return Val(step.name, t, value, deps, True)

    def evaluate_grad(self, step: Step) -> np.ndarray:
        params = step.deps
        src = HEADER + f"def _step({', '.join(params)}):\n" + \
            "".join(f"    {line}\n" for line in step.lines) + f"    return {step.name}\n"
        ns: dict = {}
        exec(compile(src, "<lamina-fuzz grad step>", "exec"), ns)
        with _outside(self.ctx):
            return lm.compile(ns["_step"], backend="numpy")(
                *[self.input_of(n).data for n in params])

    def val(self, name: str) -> Val:
        return next(v for v in self.pool if v.name == name)

    def sane(self, value: np.ndarray) -> None:
        if value.size > 4 * self.g.max_elems:
            raise Rejected("too large")
        if value.dtype.kind == "f" and value.size:
            if not np.isfinite(value).all() or np.abs(value).max() > MAX_MAGNITUDE:
                raise Rejected("not finite or too large in magnitude")
        if value.dtype.kind in "iu" and value.size and np.abs(value).max() > 1e6:
            raise Rejected("integers too large")

    def attempt(self, make) -> bool:
        """Try one step; roll back everything it added if it does not fit."""
        b, ctx = self.ctx.builder, self.ctx
        mark = (len(b.nodes), len(b.inputs), len(self.inputs), len(self.pool), self.counter,
                ctx.streams, len(b.state), len(self.params))
        try:
            step = make()
        except Rejected:
            step = None  # nothing fits; roll back below
        try:
            if step is None:
                raise Rejected("no step")
            val = self.run_step(step)
        except Rejected:
            del b.nodes[mark[0]:], b.inputs[mark[1]:], self.inputs[mark[2]:], self.pool[mark[3]:]
            self.counter, ctx.streams = mark[4], mark[5]
            for p in b.state[mark[6]:]:  # parameters made for this step
                var = ctx.variables.pop(p.name)
                ctx.state_of.pop(id(var))
                ctx.used_names.discard(p.name)
            del b.state[mark[6]:], self.params[mark[7]:]
            return False
        except Exception as e:  # noqa: BLE001 - an internal error of lamina's frontend
            self.steps.append(step)
            self.broken = f"{type(e).__name__}: {e}"
            return True
        self.steps.append(step)
        self.pool.append(val)
        return True

    # --- the whole program ---------------------------------------------------------------

    def build(self) -> Program:
        rng = self.rng
        n_steps = int(rng.integers(3, 26))
        self.ctx = TraceContext("fuzz")
        self.ns = {"lm": lm, "np": np, "apply": apply}
        with self.ctx:
            tries = 0
            while len(self.steps) < n_steps and tries < 40 * n_steps and self.broken is None:
                tries += 1
                r = rng.random()
                if r < GRAD_WEIGHT:
                    self.attempt(self.grad_step)
                elif r < GRAD_WEIGHT + LOOP_WEIGHT:
                    self.attempt(self.loop_step)
                else:
                    opdef = self.ops[int(rng.integers(len(self.ops)))]
                    self.attempt(lambda o=opdef: self.op_step(o))
        if not self.steps:
            raise RuntimeError(f"no step fits program {self.g.seed}:{self.g.index}")
        outputs = self.outputs()
        p = Program(self.g.seed, self.g.index, self.inputs, self.steps, outputs,
                    notes=[f"internal error while tracing: {self.broken}"]
                    if self.broken else [])
        floats = [] if self.broken else [
            o for o in dict.fromkeys(outputs) if self.val(o).array.dtype.kind == "f"]
        if self.params and floats:
            # a training step: the parameters move along the gradient of a loss of the outputs
            p.params = list(self.params)
            p.optimizer = OPTIMIZERS[int(rng.integers(len(OPTIMIZERS)))]
            p.loss = " + ".join(f"(lm.tanh({o}) * {rng.uniform(-1, 1):.2f}).sum()"
                                for o in floats)
        return p.live()

    def outputs(self) -> list[str]:
        rng = self.rng
        last = self.steps[-1].name
        if self.broken:
            return [last]
        used = {d for s in self.steps for d in s.deps}
        sinks = [s.name for s in self.steps if s.name not in used and s.name != last]
        others = [v.name for v in self.pool if v.name != last]
        outs = [last]
        for _ in range(int(rng.integers(0, 3))):
            pool = sinks if sinks and rng.random() < 0.7 else others
            if pool:
                outs.append(pool[int(rng.integers(len(pool)))])
        return outs


class _outside:
    """Leave the generation trace for a moment (to compile a gradient step on its own)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __enter__(self):
        self.stack = _trace_local.stack
        _trace_local.stack = []

    def __exit__(self, *exc):
        _trace_local.stack = self.stack


def generate(seed: int, index: int, small: bool = False) -> Program:
    """The program ``(seed, index)`` (``small``: sizes for the Triton interpreter)."""
    return Generator(seed, index, small).build()
