"""Loops on the triton backend: ``scan``, ``fori_loop`` and ``while_loop`` stay loops and run on
the host, launching their bodies' kernels once per step (``backends/triton/loops.py``).

The GPU runtime's stepping (``device.DeviceLoop``: bound body programs, pointer arithmetic into
the stacked inputs and outputs, the carries' double buffers, a while_loop's condition read
back per step, the error flag of a body) runs here on ``FakeDevice`` (``test_triton_runtime``):
device memory is a bounds-checked numpy heap, so a wrong address is an assertion, not a wrong
number. The tests marked ``gpu`` run the same loops with real kernels on an NVIDIA GPU; the
interpreter's stepping is checked in ``test_loops.py``, artifacts with loops here.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from test_triton_runtime import FakeDevice, fake_program

import lamina as lm
from lamina import nn, optim
from lamina.backends import runnable
from lamina.backends.triton import cuda
from lamina.ir.tree import flatten
from lamina.passes import DEFAULT
from lamina.passes.fuse import fuse_kernels
from lamina.runtime.executable import Executable

F32 = np.float32
RNG = np.random.default_rng(11)
needs_triton = pytest.mark.skipif("triton" not in runnable(), reason="needs triton (and torch)")


def _randn(*shape):
    return RNG.standard_normal(shape).astype(F32)


@pytest.fixture
def fake_device(monkeypatch):
    dev = FakeDevice()
    monkeypatch.setattr(cuda, "device", lambda: dev)
    return dev


def _on_fake(f, args, dev: FakeDevice):
    """``f`` compiled to fused kernels and run by a DeviceProgram on ``dev``."""
    fused = lm.compile(f, backend="numpy", passes=[*DEFAULT, fuse_kernels]).lower(*args)
    assert any(n.op in ("scan", "fori_loop", "while_loop") for n in fused.graph.nodes)
    program = fake_program(fused.graph, dev)
    return Executable(fused.graph, program, fused.variables, fused.out_tree, "triton"), program


def _same(got, want, rtol=1e-5, atol=1e-6):
    got, want = flatten(got)[0], flatten(want)[0]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.shape(g) == np.shape(w)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def rnn(w, h0, xs, reverse=False):
    """A scan with a constant, a carry, a stacked input and two stacked outputs (one of them
    the carry again: an output no kernel writes twice)."""
    def body(h, x):
        h2 = lm.tanh(h @ w + x)
        return h2, (h2, h2 * 2.0)
    return lm.scan(body, h0, xs, reverse=reverse)


def loops_of_every_kind(x, limit):
    """fori_loop (reading its index), while_loop (a dynamic trip count), a scan over the
    fori_loop's result with a nested scan in its body, a stacked output nobody reads."""
    a = lm.fori_loop(2, 6, lambda i, c: c * 0.5 + lm.astype(i, "float32"), x)
    k, b = lm.while_loop(lambda c: c[1].sum() < limit, lambda c: (c[0] + 1, c[1] * 3.0),
                         (0, lm.abs(a) + 1.0))

    def outer(c, row):
        d, ys = lm.scan(lambda d, y: (lm.tanh(d + y * c), d * 2.0), c, row)
        return d, ys.sum()
    c, _ = lm.scan(outer, lm.ones(()), lm.reshape(b, (2, 2)))
    e, _ = lm.scan(lambda c, y: (c + y, c * y), lm.zeros(()), b)  # ys unread
    return a, k, b, c, e


ARGS_RNN = (_randn(3, 3) * 0.5, _randn(2, 3), _randn(5, 2, 3))
ARGS_KINDS = (np.abs(_randn(4)) + 0.5, F32(300))


# --- on the fake device (the pointer plumbing, everywhere) ----------------------------------


def _rnn(reverse: bool = False):
    return lambda w, h0, xs: rnn(w, h0, xs, reverse)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_scan_on_the_device_runtime_matches_numpy(fake_device, reverse):
    f = _rnn(reverse)
    exe, _ = _on_fake(f, ARGS_RNN, fake_device)
    want = lm.compile(f, backend="numpy")(*ARGS_RNN)
    _same(exe(*ARGS_RNN), want)
    _same(exe(*ARGS_RNN), want)  # a second call starts from the new inputs again


def test_fori_while_nested_and_unread_outputs_on_the_device_runtime(fake_device):
    exe, _ = _on_fake(loops_of_every_kind, ARGS_KINDS, fake_device)
    want = lm.compile(loops_of_every_kind, backend="numpy")(*ARGS_KINDS)
    _same(exe(*ARGS_KINDS), want)
    x2 = (ARGS_KINDS[0], F32(0))  # the while_loop takes no step
    _same(exe(*x2), lm.compile(loops_of_every_kind, backend="numpy")(*x2))


EDGES = {
    "zero_length_scan": (lambda xs, h: lm.scan(lambda c, x: (c + x, c * x), h, xs),
                         (np.zeros((0, 3), F32), np.ones(3, F32))),
    "scan_without_carries": (lambda xs: lm.scan(lambda c, x: (c, lm.exp(x)), (), xs)[1],
                             (np.ones((4, 3), F32),)),
    "fori_loop_of_no_steps": (lambda x: lm.fori_loop(2, 2, lambda i, c: c * 2.0, x),
                              (np.ones(3, F32),)),
    "while_loop_in_a_scan": (
        lambda xs: lm.scan(lambda c, x: (lm.while_loop(lambda d: d.sum() < x.sum() * 10.0,
                                                       lambda d: d * 2.0, c + 1.0), c.sum()),
                           lm.ones((2,)), xs),
        (np.abs(_randn(3, 2)) + 1,)),
    "carry_passed_through": (
        lambda xs, h: lm.scan(lambda c, x: ((c[0], c[1] + x), c[0] * x), (h, h), xs),
        (np.ones((3, 2), F32), np.full(2, 2.0, F32))),
    "integer_carry": (
        lambda xs: lm.scan(lambda c, x: (c + 1, x * lm.astype(c, "float32")), 0, xs),
        (np.ones((5, 2), F32),)),
}


@pytest.mark.parametrize("case", sorted(EDGES))
def test_loop_edge_cases_on_the_device_runtime_and_the_interpreter(case, fake_device,
                                                                   monkeypatch):
    f, args = EDGES[case]
    want = lm.compile(f, backend="numpy")(*args)
    exe, _ = _on_fake(f, args, fake_device)
    _same(exe(*args), want)
    if "triton" in runnable():
        monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")
        _same(lm.compile(f, backend="triton")(*args), want)


def test_a_scan_steps_by_pointers_alone(fake_device):
    """Per step: the body's kernels, nothing uploaded or copied (a stacked slice is an address,
    the carries swap buffers); the index cells go up once, when the program is made."""
    exe, program = _on_fake(_rnn(), ARGS_RNN, fake_device)
    (loop,) = [s for s in program.launches if type(s).__name__ == "DeviceLoop"]
    body = loop.parts[0]
    fake_device.log.clear()
    exe(*ARGS_RNN)
    uploads = [p for what, p in fake_device.log if what == "upload"]
    assert sorted(uploads) == sorted(b.ptr for b in program.input_bufs)
    launched = [name for what, name in fake_device.log if what == "launch"]
    assert len(launched) == 5 * len(body.launches) + len(program.launches) - 1


class _Cell(nn.Module):
    def __init__(self):
        self.lstm = nn.LSTM(3, 4)
        self.head = nn.Linear(4, 2)

    def __call__(self, x):
        y, (_, c) = self.lstm(x)
        return self.head(y[-1]) + c.sum()


def _lstm_step(model, opt):
    def step(x):
        loss = (model(x) ** 2).mean()
        opt.minimize(loss)
        return loss
    return step


def _lstm_pair():
    a, b = _Cell(), _Cell()
    b.load_state_dict(a.state_dict())
    return (a, optim.SGD(a.parameters(), lr=0.1)), (b, optim.SGD(b.parameters(), lr=0.1))


def test_an_lstm_train_step_on_the_device_runtime_matches_numpy(fake_device):
    (ref_model, ref_opt), (model, opt) = _lstm_pair()
    x = _randn(6, 2, 3)
    ref = lm.compile(_lstm_step(ref_model, ref_opt), backend="numpy")
    exe, _ = _on_fake(_lstm_step(model, opt), (x,), fake_device)
    for _ in range(2):
        _same(exe(x), ref(x), rtol=1e-4, atol=1e-5)
    for k, v in ref_model.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v, rtol=1e-4, atol=1e-5)


def _pick(x, i):
    return lm.fori_loop(0, 3, lambda k, c: c + lm.take(x, i + k), x[0])


def test_an_index_out_of_range_in_a_body_is_an_error_and_the_flag_resets(fake_device):
    x = np.arange(4, dtype=F32)
    exe, _ = _on_fake(_pick, (x, np.int32(1)), fake_device)
    assert float(exe(x, np.int32(1))) == 6.0
    with pytest.raises(lm.LaminaError, match="take: an index is out of range") as e:
        exe(x, np.int32(2))
    assert "test_triton_loops.py" in str(e.value)  # the user's line
    assert float(exe(x, np.int32(0))) == 3.0


# --- the interpreter and artifacts ----------------------------------------------------------


@needs_triton
def test_triton_keeps_loops_as_loops_and_an_artifact_holds_the_body_kernels(tmp_path,
                                                                             monkeypatch):
    """The body's kernels are rendered once, not per step; an artifact made without a GPU
    carries them AOT-compiled (PTX and cubin for every target) and loads and runs."""
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")
    f = lm.compile(_rnn(), backend="triton")
    _same(f(*ARGS_RNN), lm.compile(_rnn(), backend="numpy")(*ARGS_RNN))
    assert "unroll" not in f.stages()
    ir = f.ir()
    assert ir.count("scan @") == 1
    path = tmp_path / "rnn.lamina"
    f.save(str(path))
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("kernels.json"))
        doc = json.loads(z.read(name))
    names = [b for k in doc["kernels"] for b in k["binaries"]]
    assert len(names) == len(set(names)) >= 2  # the top level's and the body's
    for k in doc["kernels"]:
        for bins in k["binaries"].values():
            assert {b["target"] for b in bins} == {"sm_80", "sm_90"}
            assert all(b["cubin"] and b["ptx"] for b in bins)
    g = lm.load(str(path))
    _same(g(*ARGS_RNN), f(*ARGS_RNN))


# --- on a GPU -------------------------------------------------------------------------------


def _gpu(f, *args):
    return lm.compile(f, backend="triton")(*args)


@pytest.mark.gpu
def test_loops_on_the_gpu_match_numpy(monkeypatch):
    monkeypatch.setenv("LAMINA_TRITON_MODE", "device")
    for reverse in (False, True):
        f = _rnn(reverse)
        _same(_gpu(f, *ARGS_RNN), lm.compile(f, backend="numpy")(*ARGS_RNN), 1e-4, 1e-5)
    for args in (ARGS_KINDS, (ARGS_KINDS[0], F32(0))):
        _same(_gpu(loops_of_every_kind, *args),
              lm.compile(loops_of_every_kind, backend="numpy")(*args), 1e-4, 1e-5)
    x = np.arange(4, dtype=F32)
    g = lm.compile(_pick, backend="triton")
    assert float(g(x, np.int32(1))) == 6.0
    with pytest.raises(lm.LaminaError, match="take: an index is out of range"):
        g(x, np.int32(2))
    assert float(g(x, np.int32(0))) == 3.0


@pytest.mark.gpu
def test_an_lstm_train_step_on_the_gpu_matches_numpy(monkeypatch):
    monkeypatch.setenv("LAMINA_TRITON_MODE", "device")
    (ref_model, ref_opt), (model, opt) = _lstm_pair()
    x = _randn(6, 2, 3)
    ref = lm.compile(_lstm_step(ref_model, ref_opt), backend="numpy")
    got = lm.compile(_lstm_step(model, opt), backend="triton")
    for _ in range(3):
        _same(got(x), ref(x), rtol=1e-4, atol=1e-5)
    for k, v in ref_model.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v, rtol=1e-4, atol=1e-5)


def sampler(x):
    """A 100-step sampling loop with an in-graph random draw per step."""
    return lm.fori_loop(0, 100, lambda i, c: c * 0.9 + 0.1 * lm.random.normal(c.shape), x)


@pytest.mark.gpu
def test_a_100_step_sampler_on_the_gpu_compiles_once_and_matches_numpy(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMINA_TRITON_MODE", "device")
    x = _randn(64, 8)
    lm.random.seed(5)
    want = lm.compile(sampler, backend="numpy")(x)
    lm.random.seed(5)
    f = lm.compile(sampler, backend="triton")
    _same(f(x), want, 1e-4, 1e-5)
    assert len(f.compile_log) == 1 and f.ir().count("fori_loop @") == 1
    path = tmp_path / "sampler.lamina"
    f.save(str(path))  # with the generator's state after that call: both go on from there
    _same(lm.load(str(path))(x), f(x), 1e-4, 1e-5)
