"""Shrink a failing random program to a small standalone repro file.

The minimizer keeps a change when the program still shows the same failure (backend, kind and
part: "wrong on llvm (gradient)"):

1. keep a single output, then drop every step no output needs;
2. cut a step: its value becomes an input holding the reference value (so what remains is the
   part of the program that goes wrong), and drop what becomes dead;
3. shrink shapes: every dimension of one size at once, to 1, 2 or half (new data is drawn);
4. pass every input contiguous.

Crashes and hangs are probed in a subprocess. ``write_repro`` writes ``repro_<seed>_<index>.py``:
the program as plain lamina code, its data, and a call of the checker that prints the verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import lamina as lm
from lamina.passes.manager import write_atomic
from lamina.ir.ops.domain import Operand
from lamina.testing.check import Finding, check
from lamina.testing.generate import Gen
from lamina.testing.program import HEADER, Input, Program, array_literal, to_json

PROBE_TIMEOUT = 120


def _backends(sig) -> list[str]:
    backend = sig[0]
    return ["numpy"] if backend in ("numpy", "frontend") else ["numpy", backend]


def fails(p: Program, sig: tuple, aot: str | None = None) -> bool:
    """Does ``p`` still show the failure ``sig`` = (backend, kind, part)?"""
    backend, kind, part = sig
    if kind in ("crash", "hang"):
        return _probe(p, backend, kind)
    try:
        report = check(p, _backends(sig), aot=aot)
    except Exception:  # noqa: BLE001 - a candidate the checker cannot even build
        return False
    return any(f.signature() == sig for f in report.findings)


def _probe(p: Program, backend: str, kind: str) -> bool:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(to_json(p), f)
    try:
        cmd = [sys.executable, "-m", "lamina.testing.fuzz", "--probe", f.name,
               "--backends", ",".join(_backends((backend, kind, "")))]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return kind == "hang"
        return kind == "crash" and r.returncode < 0
    finally:
        os.unlink(f.name)


def value_of(p: Program, name: str) -> np.ndarray:
    """The reference value of ``name`` (in its declared dtype)."""
    q = p.copy(outputs=[name], params=[], optimizer="", loss="").live()  # before any step
    return lm.compile(q.function(), backend="numpy")(*[i.data for i in q.argument_inputs()])[0]


def cut(p: Program, name: str) -> Program | None:
    """``p`` with step ``name`` replaced by an input holding its value."""
    try:
        value = np.asarray(value_of(p, name))
    except Exception:  # noqa: BLE001
        return None
    steps = [s for s in p.steps if s.name != name]
    inputs = p.inputs + [Input(name, value)]
    return p.copy(steps=steps, inputs=inputs).live()


def resize(p: Program, old: int, new: int) -> Program:
    """Every input dimension of size ``old`` made ``new``, with new data drawn."""
    g = Gen(p.seed, p.index)
    inputs = []
    for i in p.inputs:
        shape = tuple(new if d == old else d for d in i.data.shape)
        if shape == i.data.shape:
            inputs.append(i)
            continue
        spec = Operand(lo=i.lo, hi=i.hi, min_abs=i.min_abs)
        inputs.append(Input(i.name, g.draw(spec, shape, i.data.dtype), i.view, i.lo, i.hi,
                            i.min_abs))
    return p.copy(inputs=inputs)


def minimize(p: Program, finding: Finding, budget_s: float = 120.0,
             aot: str | None = None) -> Program:
    """The smallest program found within ``budget_s`` that still shows ``finding``."""
    sig = finding.signature()
    deadline = time.monotonic() + budget_s

    def better(q):
        return q is not None and time.monotonic() < deadline and fails(q, sig, aot)

    p = p.live()
    if len(p.outputs) > 1:
        for o in p.outputs:
            q = p.copy(outputs=[o]).live()
            if better(q):
                p = q
                break
    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        for s in reversed(list(p.steps)):
            if s.name in p.outputs and len(p.steps) == 1:
                continue
            q = cut(p, s.name) if s.name not in p.outputs else None
            if better(q):
                p, changed = q, True
        sizes = sorted({d for i in p.inputs for d in i.data.shape if d > 1}, reverse=True)
        for d in sizes:
            for new in sorted({1, 2, d // 2} - {d}):
                if new >= d:
                    continue
                q = resize(p, d, new)
                if better(q):
                    p, changed = q, True
                    break
    if any(i.view != "contig" for i in p.inputs):
        q = p.copy(inputs=[Input(i.name, i.data, "contig", i.lo, i.hi, i.min_abs)
                           for i in p.inputs])
        if better(q):
            p = q
    return p


def write_repro(p: Program, finding: Finding, directory: str, steps_before: int,
                aot: str | None = None) -> str:
    """Write ``repro_<seed>_<index>.py`` into ``directory``; returns its path. ``aot``: the GPU
    target the Triton kernels were compiled for when the failure showed."""
    name = f"repro_{p.seed}_{p.index}.py"
    path = os.path.join(directory, name)
    inputs = "\n".join(f"    Input({i.name!r}, {array_literal(i.data)}, view={i.view!r}),"
                       for i in p.argument_inputs())
    backends = _backends(finding.signature())
    if p.training:  # parameters and optimizer state are made afresh for each backend
        init = "\n".join(f"    {i.name!r}: {array_literal(i.data)},"
                         for i in p.inputs if i.name in p.params)
        body = "\n".join(("    " + line).rstrip() for line in p.source().splitlines())
        program = f"_init = {{\n{init}\n}}\n\n\ndef make():\n{body}\n    return program\n"
        call = f"check_function(make, INPUTS, {backends!r}, seed=({p.seed}, {p.index}), " \
               f"fresh=True, aot={aot!r})"
    else:
        program = p.source()
        call = f"check_function(program, INPUTS, {backends!r}, seed=({p.seed}, {p.index}), " \
               f"aot={aot!r})"
    text = f'''"""lamina random-program checker: program {p.seed}:{p.index}, minimized from {steps_before} to {len(p.steps)} step(s).

{finding}

Run: python {name}   (prints the checker's verdict; exit status 1 while the failure remains)
"""
import sys

{HEADER}from lamina.testing.program import Input, npy as _npy

{program}

INPUTS = [
{inputs}
]

if __name__ == "__main__":
    from lamina.testing.check import check_function

    report = {call}
    for finding in report.findings:
        print(finding)
    print("still failing" if report.findings else "passes now")
    sys.exit(1 if report.findings else 0)
'''
    os.makedirs(directory, exist_ok=True)
    write_atomic(path, text)
    return path
