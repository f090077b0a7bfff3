"""The random-program checker (lamina.testing): its parts, and the fixed budget CI runs.

``test_fixed_budget`` is the CI run: 500 programs of seed 0 on numpy and llvm, every 5th one
(small) on triton as well (Triton's interpreter without a GPU): 0 failures of any kind.
Longer runs: ``python -m lamina.testing.fuzz --n 20000 --seed 1``.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lamina as lm
from lamina.backends import runnable
from lamina.ir import dtypes as dt
from lamina.ir.ops import all_ops
from lamina.ir.ops.domain import Domain
from lamina.testing import fuzz
from lamina.testing.check import Finding, check, check_function, oracle_graph
from lamina.testing.generate import generate
from lamina.testing.minimize import minimize, write_repro
from lamina.testing.oracle import Oracle, gamma, mismatches, unit
from lamina.testing.program import Input, from_json, to_json


def test_every_op_declares_its_domain():
    """A new op is fuzzed from its first commit: it must say which inputs it is valid on (or
    how programs reach it, for ops no program calls: grad, alias, kernel)."""
    missing = [o.name for o in all_ops() if not isinstance(o.domain, Domain)]
    assert not missing, f"ops without a domain= in their declaration: {missing}"
    for o in all_ops():
        if o.domain.via:
            assert o.domain.first is None or o.kind in ("special", "kernel", "elementwise")


def test_programs_depend_only_on_seed_and_index():
    a, b = generate(3, 17), generate(3, 17)
    assert a.source() == b.source()
    assert all(np.array_equal(x.data, y.data) and x.view == y.view
               for x, y in zip(a.inputs, b.inputs))
    assert generate(3, 18).source() != a.source()


def test_generation_reaches_every_callable_op():
    seen = set()
    for i in range(300):  # loops and gradients take some steps: rare ops need ~300 programs
        seen |= {s.op for s in generate(11, i).steps}
    want = {o.name for o in all_ops() if o.domain.callable} | {"grad"}
    assert want <= seen, f"never generated: {sorted(want - seen)}"


def test_generated_programs_cover_the_shapes_the_issue_names():
    """Zero-size and size-1 axes, equal-sized axes (square), rank 0 to 4, every dtype, views."""
    ranks, dtypes, views, zero, square = set(), set(), set(), 0, 0
    for i in range(150):
        p = generate(5, i)
        for x in p.inputs:
            ranks.add(x.data.ndim)
            dtypes.add(x.data.dtype.name)
            views.add(x.view)
            zero += x.data.size == 0
            square += x.data.ndim >= 2 and x.data.shape[-1] == x.data.shape[-2] > 1
    assert ranks >= {0, 1, 2, 3, 4}
    assert dtypes >= {"float32", "float64", "int32", "int64", "bool"}
    assert views >= {"contig", "transposed", "strided", "offset", "reversed"}
    assert zero > 0 and square > 10


def test_program_survives_json():
    p = generate(0, 4)
    q = from_json(json.loads(json.dumps(to_json(p))))
    assert q.source() == p.source()
    assert all(np.array_equal(x.data, y.data) for x, y in zip(p.inputs, q.inputs))


# --- the oracle -------------------------------------------------------------------------------


def _bound(fn, *arrays):
    _, g = oracle_graph(fn, arrays)
    return Oracle(g).run(arrays)


def test_sum_bound_grows_with_the_number_of_terms():
    x = np.full(1000, 0.1, np.float32)
    (v, e), = _bound(lambda x: x.sum(), x)
    assert v == pytest.approx(1000 * float(np.float32(0.1)))
    assert e >= gamma(1000, unit(dt.float32)) * 100 * 0.99
    assert e < 0.01  # a wrong sum (one term missing: 0.1 off) is far outside


def test_comparison_of_close_values_is_uncertain():
    a = np.array([1.0, 2.0], np.float32)
    (v, e), = _bound(lambda a: (lm.exp(a) - lm.exp(a) * (1 + 1e-9)) < 0, a)
    assert np.isinf(e).all()  # either answer is right in float32
    (v, e), = _bound(lambda a: a < 1.5, a)
    assert (e == 0).all() and v.tolist() == [True, False]


def test_equality_within_the_bounds_is_uncertain():
    """sigmoid(17) is 1 - 4e-8: float32 rounds it to 1.0, so `!= 1` may be either (equality is
    one point: moving the operands by their bounds steps over it)."""
    x = np.array([17, 1], np.int32)
    (v, e), = _bound(lambda x: lm.sigmoid(x) != 1.0, x)
    assert v.tolist() == [True, True]
    assert np.isinf(e[0]) and e[1] == 0


def test_division_by_a_value_that_may_be_zero_is_unbounded():
    """The gradient of std at a vector that is 0 up to rounding (the gradient of a softmax's
    sum): float32 may compute the variance as exactly 0, and 0/0 is NaN. The oracle's bound must
    reach the singular point, not stop at a large finite number (checker seed 1, program 232)."""
    x = np.array([[1.7, 0.5, -1.1], [1.0, 0.4, 1.3], [0.1, 1.4, 0.7]], np.float32)

    def f(x):
        g = lm.grad(lambda x: lm.softmax(x, axis=0).sum())(x)
        return lm.grad(lambda g: lm.std(g, axis=0).sum())(g)

    (v, e), = _bound(f, x)
    assert np.isinf(e).all()
    (v, e), = _bound(lambda x: 1.0 / (x - x * (1 + 1e-9)), x)  # 0 up to rounding
    assert np.isinf(e).all()
    (v, e), = _bound(lambda x: 1.0 / (x + 3.0), x)  # far from 0: a tight bound
    assert (e < 1e-5).all()


def test_mismatches_finds_a_value_outside_its_bound():
    v, e = np.array([1.0, 2.0, np.nan, np.inf]), np.array([1e-6, 1e-6, 0.0, 0.0])
    good = np.array([1.0, 2.0000005, np.nan, np.inf], np.float32)
    assert not mismatches(good, v, e).any()
    bad = np.array([1.0, 2.001, 0.0, np.inf], np.float32)
    assert mismatches(bad, v, e).tolist() == [False, True, True, False]
    unsure = np.array([5.0, 2.0, np.nan, 1.0], np.float32)
    assert mismatches(unsure, v, np.array([np.inf, 0, 0, np.inf])).tolist() == [False] * 4


# --- the checker finds what is wrong ----------------------------------------------------------


def _inputs(*arrays):
    return [Input(f"v{k}", a) for k, a in enumerate(arrays)]


def test_check_passes_a_correct_program():
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    report = check_function(lambda x: (lm.softmax(x, axis=1), x.sum(axis=0)), _inputs(x),
                            ["numpy", "llvm"])
    assert report.findings == []
    assert {"softmax", "exp", "sum", "kernel"} <= report.ops


def _break_numpy_backend(monkeypatch, after_run):
    """Make the numpy backend (in this process) pass every call's (inputs, outputs) through
    ``after_run(inputs, outputs) -> outputs``: a stand-in for a broken backend."""
    from lamina.backends.numpy import backend as numpy_backend

    real = numpy_backend.compile

    def broken(graph, *a, **k):
        program = real(graph, *a, **k)

        def run(inputs, state):
            outs, up = program(inputs, state)
            return after_run(inputs, outs), up
        return run

    monkeypatch.setattr(numpy_backend, "compile", broken)


def test_check_reports_wrong_values_and_shapes(monkeypatch):
    """A backend whose float32 results are a little off, and 1-d where they should be 0-d."""
    _break_numpy_backend(monkeypatch, lambda inputs, outs: [
        o * np.float32(1 + 1e-4) if o.dtype == np.float32 else o.reshape(-1) for o in outs])
    x = np.linspace(-1, 1, 6, dtype=np.float32)
    report = check_function(lambda x: (lm.tanh(x), x.astype(np.float64).sum()), _inputs(x),
                            ["numpy"])
    kinds = {(f.kind, f.part) for f in report.findings}
    assert ("wrong", "program") in kinds and ("shape", "program") in kinds
    assert ("wrong", "gradient") in kinds


def test_check_reports_modified_inputs(monkeypatch):
    def scribble(inputs, outs):
        if inputs[0].size:
            inputs[0].reshape(-1)[0] = 42  # a backend writing into its input
        return outs

    _break_numpy_backend(monkeypatch, scribble)
    x = np.ones(4, np.float32)
    report = check_function(lambda x: (x * 2,), _inputs(x), ["numpy"])
    assert any(f.kind == "modified" for f in report.findings)


# --- the driver: crashes and hangs are counted, never fatal -----------------------------------


def _fake_worker(tmp_path, body: str):
    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent("""
        import json, os, signal, sys, time
        args = sys.argv[1:]
        start, stop = int(args[args.index("--start") + 1]), int(args[args.index("--stop") + 1])
        def emit(o):
            print(json.dumps(o), flush=True)
        for i in range(start, stop):
            emit({"at": i})
    """) + textwrap.indent(textwrap.dedent(body) + textwrap.dedent("""
        emit({"done": i, "backends": ["llvm"], "steps": 1, "ops": ["add"],
              "invalid": None, "findings": []})
    """), "    "))
    return [sys.executable, str(script)]


def test_driver_reports_progress_on_a_long_run(capsys, monkeypatch):
    monkeypatch.setattr(fuzz._Progress, "every", 0.0)
    p = fuzz._Progress(200, t0=fuzz.time.monotonic() - 90)
    p.show(50, 1)
    err = capsys.readouterr().err
    assert err.startswith("  50/200 programs, 1 failure(s), 1m30s (~4m30s left)"), err


def test_driver_counts_a_crash_and_goes_on(tmp_path):
    cmd = _fake_worker(tmp_path, """
        emit({"at": i, "phase": "llvm program"})
        if i == 3:
            os.kill(os.getpid(), signal.SIGSEGV)
    """)
    s = fuzz.run(8, backends=["llvm"], chunk=8, jobs=1, minimize=False, quiet=True,
                 worker_cmd=cmd)
    assert s.checked["llvm"] == 7
    assert [(f[0], f[1], f[2]) for f in s.failures] == [(3, "llvm", "crash")]


def test_driver_counts_a_hang_and_goes_on(tmp_path):
    cmd = _fake_worker(tmp_path, """
        if i == 1:
            emit({"at": i, "phase": "llvm gradient"})
            time.sleep(60)
    """)
    s = fuzz.run(3, backends=["llvm"], chunk=3, jobs=1, minimize=False, quiet=True, timeout=2,
                 worker_cmd=cmd)
    assert s.checked["llvm"] == 2
    assert [(f[0], f[1], f[2], f[3]) for f in s.failures] == [(1, "llvm", "hang", "gradient")]


# --- the minimizer ----------------------------------------------------------------------------


def test_minimizer_shrinks_a_failure_to_a_standalone_repro(tmp_path, monkeypatch):
    """With the numpy backend made wrong (float32 results 1% off, in this process only), a long
    program shrinks to one step on small shapes; the repro file runs on its own (and passes
    there, where nothing is broken)."""
    _break_numpy_backend(monkeypatch, lambda inputs, outs: [
        o * np.float32(1.01) if o.dtype == np.float32 else o for o in outs])
    # the first long program whose float32 outputs the breakage reaches (a program whose only
    # float32 output is round(uniform) drawn from lamina's global key, advanced by whichever
    # tests ran before, may be all zeros: 1% of 0 is 0)
    for index in (i for i in range(400) if len(generate(2, i).steps) > 8):
        p = generate(2, index)
        found = [f for f in check(p, ["numpy"]).findings if f.kind == "wrong"]
        if found:
            break
    assert found
    q = minimize(p, found[0], budget_s=120)
    assert len(q.steps) < len(p.steps)
    assert sum(i.data.size for i in q.inputs) <= sum(i.data.size for i in p.inputs)
    path = write_repro(q, found[0], str(tmp_path), len(p.steps))
    monkeypatch.undo()
    r = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=300)
    assert "passes now" in r.stdout, r.stdout + r.stderr
# --- the fixed budget (CI) --------------------------------------------------------------------


def test_fixed_budget(tmp_path):
    backends = [b for b in ("numpy", "llvm", "triton") if b in runnable()]
    s = fuzz.run(500, seed=0, backends=backends, triton_every=5, jobs=2,
                 out_dir=str(tmp_path / "repros"), quiet=True)
    print(s.text())
    assert s.checked["llvm"] == 500
    if "triton" in backends:
        assert s.checked["triton"] == 100
    assert s.ok, s.text()
    assert all(s.ops[o.name] > 0 for o in all_ops())


def test_average_pooling_bound_holds_in_any_summation_order():
    """Regression (checker seed 21, program 198): the oracle bounded avg_pool as its
    decomposition, a chain of adds in one order, so numpy's window sum in another order fell
    outside it where the window nearly cancels. A window is a sum of K terms in any order."""
    x = np.random.default_rng(228).uniform(-2, 2, (1, 2, 6, 7)).astype(np.float32)
    report = check_function(
        lambda x: (lm.avg_pool(x, (2, 3), stride=(2, 1), padding=(1, 0),
                               count_include_pad=False),), _inputs(x), ["numpy", "llvm"])
    assert report.findings == []
    assert "avg_pool" in report.ops and "avg_pool_grad" in report.ops


def test_average_pooling_bound_still_catches_a_wrong_window(monkeypatch):
    """The any-order bound is not loose: a result off by 1e-4 relative is reported."""
    _break_numpy_backend(monkeypatch, lambda inputs, outs: [o * np.float32(1 + 1e-4)
                                                            for o in outs])
    x = np.random.default_rng(228).uniform(-2, 2, (1, 2, 6, 7)).astype(np.float32)
    report = check_function(lambda x: (lm.avg_pool(x, 2),), _inputs(x), ["numpy"])
    assert any(f.kind == "wrong" and f.part == "program" for f in report.findings)


def test_an_uncertain_choice_carries_the_chosen_branch_bound():
    """Regression (checker seed 22, program 5162): max pooling as where chains over a conv
    whose integer weights cancel to exactly 0 in float64; llvm's float32 sum left 2^-23 and
    picked it over a hole's exact 0. The oracle bounded the flipped choice by the difference
    of the branches' values (0) and not by the chosen branch's own bound."""
    w = np.array([3, -1, -3, 1, 2, -3, 1, 3, 1, 0, -1, -1, 2, 0, 2, -3, -3, 3, 1, 2, 1, 0, 3,
                  0, 2, 1, 2, 3, 2, 2, 1, 3, -3, -1, 0, 1, 3, 1, 1, 1, 2, -3, -3, 1, -2, -2,
                  -1, 2], np.int64).reshape(16, 1, 3, 1)

    def program(w):
        y = lm.nn.functional.conv_transpose2d(lm.full((16, 16, 16, 16), 0.30814939737319946,
                                                      lm.float32), w, stride=(1, 2),
                                              padding=(0, 1), output_padding=(1, 0),
                                              dilation=(2, 1))
        return (lm.max_pool(y, (1, 3), stride=(1, 1), padding=(0, 1), ceil_mode=True),)

    report = check_function(program, _inputs(w), ["numpy", "llvm"])
    assert report.findings == []


def test_a_remainder_whose_dividend_spans_periods_is_uncertain():
    """Regression (checker seed 22, program 1001): an int32 dividend of 784825105, rounded by
    its cast to float32 (by 17), spans about ten periods of a divisor of 1.73: the remainder
    may be anywhere in [0, 1.73), which the samples of the dividend's bound missed."""
    a = np.array(784825105, np.int32)
    b = np.array([1.7297523], np.float32)
    report = check_function(lambda a, b: (lm.cos(lm.mod(a, b)),), _inputs(a, b),
                            ["numpy", "llvm"])
    assert report.findings == []


def test_a_wrong_remainder_of_an_exact_dividend_is_still_reported(monkeypatch):
    _break_numpy_backend(monkeypatch, lambda inputs, outs: [o + np.float32(1e-3) for o in outs])
    x = np.array([5.5, -3.25, 7.0], np.float32)
    report = check_function(lambda x: (lm.mod(x, 2.0),), _inputs(x), ["numpy"])
    assert any(f.kind == "wrong" and f.part == "program" for f in report.findings)


def test_one_uncertain_bool_used_twice_flips_in_both_places():
    """Regression (checker seed 22, program 7989): ``v != tanh(v)`` at v = -1.24e-4 is True in
    float64 and may be False in float32 (tanh rounds to v); ``logical_or(c, c)`` of it was
    called exact because flipping either operand alone leaves the result True."""
    v = np.array([-0.0001236345, 0.5], np.float32)

    from lamina.frontend.ops import apply

    def program(v):
        c = v != lm.tanh(v)
        return (apply("logical_or", c, c),)

    report = check_function(program, _inputs(v), ["numpy", "llvm"])
    assert report.findings == []
