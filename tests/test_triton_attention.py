"""The Triton backend's own attention kernels (``backends/triton/attention.py``): ``attention``
as one flash-style kernel per query block x batch-head, ``attention_grad`` as a lse/D/dq
kernel and a dk/dv kernel (no matmul/softmax expansion). Checked under Triton's interpreter
(tiny sizes: it runs every program in Python) against the float64 numpy reference for float32
and float64, causal or not, with a key-padding bias holding -inf entries or a full bias, L != S,
head dims 8, 16 and ones that are not powers of two (12, values 5), batch axes of rank 0, 1
and 2, rows with every key masked (0, zero gradients); the fused IR holds one attention
kernel; ``scaled_dot_product_attention`` under ``lm.grad`` matches numpy; the kernels compile
ahead of time for sm_80 and sm_90 (no GPU needed) and survive an artifact."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina.frontend.ops import run
from lamina.ir.ops.attention import _attention_ref, _grad_ref

triton = pytest.importorskip("triton")
pytest.importorskip("torch", reason="Triton's interpreter needs torch (lamina[triton-test])")

from lamina.backends.triton import aot  # noqa: E402

F32, F64 = np.float32, np.float64
SDPA = lm.nn.functional.scaled_dot_product_attention
BOTH = ("sm_80", "sm_90")


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")


def _attention(causal, scale):
    return lambda *xs: run(lambda b, *v: b.call("attention", *v, causal=causal, scale=scale), *xs)


def _attention_grad(causal, scale):
    return lambda *xs: run(lambda b, *v: b.call("attention_grad", *v, causal=causal,
                                                scale=scale), *xs)


def _sources(fc):
    return [src for _, src in fc._variant().program.sources]


def _attention_sources(fc):
    """Every launch of the attention kernels of ``fc`` (a gradient's prologue included)."""
    return [s for src in _sources(fc) for s in [*src.prologue, src] if src.kind == "attention"]


def _tolerance(dtype, ref):
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    return (1e-5, 2e-6 * scale) if dtype == F32 else (1e-12, 1e-13 * scale)


def _bias(rng, shape, kind, dtype):
    if kind == "padding":  # a key-padding mask as a bias: 0 or -inf, the first key kept
        b = np.where(rng.random(shape) < 0.4, -np.inf, 0.0)
        b[..., 0] = 0.0
        return b.astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _check(xs, causal, scale, dtype, compile_for=()):
    """attention and attention_grad on triton against the float64 reference; each is one
    attention kernel (the gradient: two launches), no matmul or exp primitive."""
    x64 = [x.astype(F64) for x in xs]
    fc = lm.compile(_attention(causal, scale), backend="triton")
    out = fc(*xs)
    want = _attention_ref(*x64, causal=causal, scale=scale)
    assert out.dtype == dtype and out.shape == want.shape
    rtol, atol = _tolerance(dtype, want)
    assert_close(out, want, rtol=rtol, atol=atol)
    rng = np.random.default_rng(7)
    g = rng.standard_normal(want.shape).astype(dtype)
    gin = list(xs[:3]) + [want.astype(dtype), g] + list(xs[3:])
    gc = lm.compile(_attention_grad(causal, scale), backend="triton")
    packed = gc(*gin)
    gwant = _grad_ref(*[x.astype(F64) for x in gin], causal=causal, scale=scale)
    assert packed.dtype == dtype and packed.shape == gwant.shape
    rtol, atol = _tolerance(dtype, gwant)
    assert_close(packed, gwant, rtol=rtol, atol=10 * atol)
    for f, launches in ((fc, 1), (gc, 2)):
        fused = f.ir("fused")
        assert fused.count("= kernel @") == 1 and "attention" in fused
        assert not any(f" = {p}(" in fused for p in ("matmul", "exp", "max", "sum")), fused
        srcs = _attention_sources(f)
        assert len(srcs) == launches and all("tl.dot(" in s.source for s in srcs)
        for target in compile_for:
            for s in srcs:
                b = aot.compile_source(s, target)
                assert b.cubin[:4] == b"\x7fELF" and f".target {target}" in b.ptx
    return out, packed, fc, gc


# (name, batch axes, L, S, E, Ev, causal, bias: (shape, kind) or None)
CASES = [
    ("causal_rank1_e12_ev5", (2,), 5, 7, 12, 5, True, None),
    ("cross_rank1_e12_ev5", (2,), 6, 3, 12, 5, False, None),
    ("rank0_e16", (), 9, 5, 16, 16, False, None),
    ("rank0_causal_more_keys", (), 4, 9, 8, 8, True, None),
    ("rank2_key_padding", (2, 2), 5, 7, 8, 8, False, ((2, 1, 1, 7), "padding")),
    ("rank2_causal_key_padding", (1, 2), 6, 6, 8, 4, True, ((1, 1, 1, 6), "padding")),
    ("rank1_full_bias", (2,), 4, 6, 16, 5, False, ((2, 4, 6), "full")),
    ("rank2_bias_broadcast_rows", (2, 3), 3, 5, 8, 8, False, ((3, 1, 5), "full")),
    ("causal_full_bias_lower_rank", (2,), 7, 7, 12, 8, True, ((7, 7), "full")),
    ("two_query_blocks", (1,), 20, 18, 8, 8, True, None),
]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,lead,L,S,E,Ev,causal,bias", CASES, ids=[c[0] for c in CASES])
def test_attention_and_gradient_match_reference(name, lead, L, S, E, Ev, causal, bias, dtype):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    xs = [rng.standard_normal((*lead, L, E)), rng.standard_normal((*lead, S, E)),
          rng.standard_normal((*lead, S, Ev))]
    xs = [x.astype(dtype) for x in xs]
    if bias is not None:
        xs.append(_bias(rng, bias[0], bias[1], dtype))
    _check(xs, causal, 0.37 if E != 16 else 0.25, dtype)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_fully_masked_rows_give_zero_and_zero_gradients(dtype):
    """Rows whose keys are all masked out (a -inf bias row; causal with the only keys it
    could see masked) get 0 and zero gradients, never NaN, as the reference does."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((2, 5, 4), (2, 6, 4), (2, 6, 3)))
    bias = np.zeros((5, 6), dtype)
    bias[1] = -np.inf
    bias[3, 2:] = -np.inf
    bias[0, 0] = -np.inf  # causal: row 0 sees key 0 only
    for causal in (False, True):
        out, packed, _, _ = _check([q, k, v, bias], causal, 0.5, dtype)
        assert np.isfinite(out).all() and np.isfinite(packed).all()
        assert np.all(out[:, 1] == 0)
        dq = packed[:2 * 5 * 4].reshape(2, 5, 4)  # all of dq first
        assert np.all(dq[:, 1] == 0)
        if causal:
            assert np.all(out[:, 0] == 0) and np.all(dq[:, 0] == 0)


@pytest.mark.parametrize("L,S,E,Ev", [(0, 4, 8, 3), (3, 0, 8, 3), (3, 4, 8, 0), (3, 4, 0, 2)],
                         ids=["no_queries", "no_keys", "no_value_features", "no_features"])
def test_empty_sizes(L, S, E, Ev):
    """Zero queries, keys or features: the reference's results (no keys: zeros)."""
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(s).astype(F32) for s in ((2, L, E), (2, S, E), (2, S, Ev))]
    _check(xs, S > 0 and L > 0, 0.5, F32)


def test_sdpa_gradient_end_to_end_matches_numpy():
    """A small attention block under lm.grad: scaled_dot_product_attention with a boolean
    key-padding mask, its gradient through the attention_grad kernels."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(s).astype(F32) for s in ((2, 2, 5, 8), (2, 2, 6, 8),
                                                            (2, 2, 6, 4)))
    w = rng.standard_normal((4, 3)).astype(F32)
    keep = np.ones((2, 1, 1, 6), bool)
    keep[0, ..., 4:] = False

    def loss(q, k, v, w):
        o = SDPA(q, k, v, attn_mask=keep)
        return (lm.tanh(o @ w) ** 2).sum()

    f = lm.grad(loss, argnums=(0, 1, 2, 3))
    fc = lm.compile(f, backend="triton")
    got = fc(q, k, v, w)
    want = lm.compile(f, backend="numpy")(q, k, v, w)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert_close(a, b, rtol=2e-5, atol=2e-5)
    kinds = [src.kind for src in _sources(fc)]
    assert kinds.count("attention") == 2  # the forward and the gradient, nothing expanded
    assert " = matmul(" in fc.ir("fused")  # only the projection by w is a matmul


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("shapes", [((2, 5, 12), 7, 5), ((1, 1, 1), 1, 1)],
                         ids=["e12_ev5", "one_row_one_column"])
def test_kernels_compile_for_sm80_and_sm90(dtype, shapes):
    """Without a GPU, through Triton's compiler: float64 included, and tiles of one row or
    column (a float64 tl.dot of a broadcast tile fails Triton's sm_80 pipeline: these are
    masked-load tiles of their own)."""
    (qs, S, Ev) = shapes
    rng = np.random.default_rng(4)
    *lead, L, E = qs
    xs = [rng.standard_normal(s).astype(dtype) for s in (qs, (*lead, S, E), (*lead, S, Ev))]
    xs.append(_bias(rng, (*lead, 1, S), "full", dtype))
    _check(xs, True, 0.3, dtype, compile_for=BOTH)


def test_attention_kernels_survive_an_artifact(tmp_path):
    """A saved triton artifact with both attention kernels (the gradient's scratch argument
    and its prologue) loads and runs to the same numbers."""
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal(s).astype(F32) for s in ((2, 4, 8), (2, 5, 8), (2, 5, 3)))

    def f(q, k, v):
        return lm.grad(lambda q, k, v: (SDPA(q, k, v, is_causal=True) ** 2).sum(),
                       argnums=(0, 1, 2))(q, k, v)

    fc = lm.compile(f, backend="triton")
    want = fc(q, k, v)
    assert any(("scratch",) in s.args for s in _attention_sources(fc))
    fc.save(str(tmp_path / "attention.lamina"))
    got = lm.load(str(tmp_path / "attention.lamina"))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_attention_after_a_kernel_that_can_fail():
    """A gather before the attention may stop the step (an index out of range): the
    attention kernels' stores wait on its error flag, and still store when it passed."""
    rng = np.random.default_rng(8)
    table = rng.standard_normal((10, 8)).astype(F32)
    idx = np.array([[1, 4, 2, 9], [0, 3, 3, 7]], np.int32)

    def f(table, idx):
        x = lm.take(table, idx, axis=0)  # [2, 4, 8]
        return SDPA(x, x, x, is_causal=True)

    fc = lm.compile(f, backend="triton")
    got = fc(table, idx)
    want = lm.compile(f, backend="numpy")(table, idx)
    assert_close(got, want)
    srcs = _attention_sources(fc)
    assert srcs and all("ok = " in s.source for s in srcs)
    for s in srcs:
        assert aot.compile_source(s, "sm_90").cubin[:4] == b"\x7fELF"


def test_many_batch_heads_fold_into_grid_x(monkeypatch):
    """More batch-heads than CUDA's grid.y allows (65,535) fold into grid.x: the same numbers
    (the limit lowered to 1 here, so that 3 batch-heads fold)."""
    from lamina.backends.triton import attention

    monkeypatch.setattr(attention, "MAX_GRID_Y", 1)
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal(s).astype(F64) for s in ((3, 20, 8), (3, 18, 8), (3, 18, 5))]
    _, _, fc, gc = _check(xs, True, 0.4, F64)
    for s in _attention_sources(fc) + _attention_sources(gc):
        assert s.grid[1] == 1 and s.grid[0] % 3 == 0 and "bh = t // " in s.source


def test_empty_batch_with_a_bias():
    """Regression (checker seed 25, program 7450): an empty batch with a bias (a float
    attn_mask) divided by the batch size while rendering the bias's index."""
    xs = [np.zeros(s, F32) for s in ((0, 1, 1), (0, 1, 1), (0, 1, 0))]
    xs.append(np.full((1, 1), 0.53, F32))
    _check(xs, False, 1.0, F32, compile_for=("sm_80",))
