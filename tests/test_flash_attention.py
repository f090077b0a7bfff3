"""The fused ``attention`` op and its gradient (``ir/ops/attention.py``): against the numpy
reference on every backend (llvm runs the flash-style kernels of ``backends/llvm/
attention.py``, triton those of ``backends/triton/attention.py`` under Triton's
interpreter), shapes that exercise the kernels' blocks and padding, gradients against float64
finite differences, rows with no key, and that the fused kernels really run (the fused IR,
the kernel names).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, directional_fd

import lamina as lm
from lamina.frontend.ops import run
from lamina.ir.ops.attention import _attention_ref, _grad_ref

F32, F64 = np.float32, np.float64
SDPA = lm.nn.functional.scaled_dot_product_attention

# (name, q shape, keys S, value features Ev, causal, bias shape or None)
SHAPES = [
    ("small_causal", (2, 5, 4), 7, 3, True, None),
    ("keys_fewer_than_queries", (2, 9, 8), 4, 8, True, None),
    ("blocks_with_tails", (1, 2, 70, 16), 131, 8, True, None),
    ("blocks_not_causal", (1, 2, 70, 16), 131, 8, False, None),
    ("head_dim_64", (1, 1, 130, 64), 130, 64, True, None),
    ("key_padding_bias", (2, 2, 33, 8), 33, 8, False, (2, 1, 1, 33)),
    ("full_bias", (2, 3, 4), 6, 5, False, (2, 3, 6)),
    ("causal_and_bias", (1, 2, 12, 8), 12, 8, True, (12, 12)),
    ("one_query", (3, 1, 16), 9, 16, False, None),
    # whole query blocks and whole-vector head dims: llvm's dQ accumulates in the output
    ("dq_in_place_causal", (2, 2, 128, 16), 128, 8, True, None),
    ("dq_in_place_cross", (3, 32, 8), 40, 8, False, (3, 1, 40)),
]


def _inputs(rng, qs, S, Ev, bias, dtype):
    *lead, L, E = qs
    xs = [rng.standard_normal(qs), rng.standard_normal((*lead, S, E)),
          rng.standard_normal((*lead, S, Ev))]
    if bias is not None:
        xs.append(rng.standard_normal(bias))
    return [x.astype(dtype) for x in xs]


def _attention(causal, scale):
    return lambda *xs: run(lambda b, *v: b.call("attention", *v, causal=causal, scale=scale), *xs)


def _attention_grad(causal, scale):
    return lambda *xs: run(lambda b, *v: b.call("attention_grad", *v, causal=causal,
                                                scale=scale), *xs)


def _backends():
    """numpy, llvm and, where it can run (on a GPU or under its interpreter), triton."""
    from lamina.backends import runnable

    return ["numpy", "llvm"] + (["triton"] if "triton" in runnable() else [])


def _tolerance(dtype, ref):
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    return (1e-5, 2e-6 * scale) if dtype == F32 else (1e-11, 1e-12 * scale)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,qs,S,Ev,causal,bias", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("target", _backends())
def test_attention_matches_reference(target, name, qs, S, Ev, causal, bias, dtype):
    if target == "triton" and np.prod(qs) * S > 20000:
        pytest.skip("Triton's interpreter: small shapes only")
    rng = np.random.default_rng(1)
    xs = _inputs(rng, qs, S, Ev, bias, dtype)
    scale = 0.37
    out = lm.compile(_attention(causal, scale), backend=target)(*xs)
    want = _attention_ref(*[x.astype(F64) for x in xs], causal=causal, scale=scale)
    rtol, atol = _tolerance(dtype, want)
    assert out.dtype == dtype and out.shape == want.shape
    assert_close(out, want, rtol=rtol, atol=atol)
    # the gradient op, with the attention's own output and a random cotangent
    g = rng.standard_normal(want.shape).astype(dtype)
    gin = xs[:3] + [want.astype(dtype), g] + xs[3:]
    packed = lm.compile(_attention_grad(causal, scale), backend=target)(*gin)
    gwant = _grad_ref(*[x.astype(F64) for x in gin], causal=causal, scale=scale)
    rtol, atol = _tolerance(dtype, gwant)
    assert_close(packed, gwant, rtol=rtol, atol=10 * atol)


@pytest.mark.parametrize("target", _backends())
def test_fully_masked_rows_give_zero(target):
    """A query whose keys are all masked out (-inf bias) gets 0 and zero gradients."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal(s).astype(F32) for s in ((2, 5, 4), (2, 6, 4), (2, 6, 3)))
    bias = np.zeros((5, 6), F32)
    bias[1] = -np.inf
    bias[3, 2:] = -np.inf
    f = _attention(False, 0.5)
    out = lm.compile(f, backend=target)(q, k, v, bias)
    assert np.all(out[:, 1] == 0) and np.isfinite(out).all()
    assert_close(out, _attention_ref(q, k, v, bias, causal=False, scale=0.5), atol=2e-6)
    g = rng.standard_normal(out.shape).astype(F32)
    packed = lm.compile(_attention_grad(False, 0.5), backend=target)(q, k, v, out, g, bias)
    assert np.isfinite(packed).all()
    dq = packed[:2 * 5 * 4].reshape(2, 5, 4)  # all of dq first
    assert np.all(dq[:, 1] == 0)
    assert_close(packed, _grad_ref(q, k, v, out, g, bias, causal=False, scale=0.5), atol=1e-5)


@pytest.mark.parametrize("target", ["numpy", "llvm"])
@pytest.mark.parametrize("kind", ["causal", "bias", "cross_lengths"])
def test_gradients_match_float64_finite_differences(target, kind):
    """d<attention(q, k, v [, bias]), r> against central differences along a random
    direction, through the op's vjp (and so attention_grad's kernel on llvm)."""
    rng = np.random.default_rng(3)
    L, S = (7, 7) if kind != "cross_lengths" else (5, 11)
    q, k, v = (rng.standard_normal(s) for s in ((2, L, 9), (2, S, 9), (2, S, 3)))
    m = rng.standard_normal((L, S)) if kind == "bias" else None
    r = rng.standard_normal((2, L, 3))
    causal = kind != "bias"

    def loss(q, k, v, m=None):
        xs = (q, k, v) + ((m,) if m is not None else ())
        return (_attention(causal, 0.8)(*xs) * r).sum()

    args = (q, k, v) + ((m,) if m is not None else ())
    argnums = tuple(range(len(args)))
    grads = lm.compile(lm.grad(loss, argnums=argnums), backend=target)(*args)
    ds = [rng.standard_normal(x.shape) for x in args]
    analytic = float(sum((g * d).sum() for g, d in zip(grads, ds)))
    numeric = directional_fd(lambda *xs: float(loss(*xs)), list(args), ds)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


def test_second_order_goes_through_the_decomposition():
    """The gradient of a gradient: attention_grad has no rule of its own; autodiff
    differentiates its decomposition (checked against finite differences of the first
    gradient)."""
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal(s) for s in ((1, 4, 3), (1, 5, 3), (1, 5, 2)))
    r = rng.standard_normal((1, 4, 2))

    def inner(q, k, v):
        return (_attention(True, 0.9)(q, k, v) * r).sum()

    def outer(q, k, v):
        gq = lm.grad(inner, argnums=0)(q, k, v)
        return (gq * gq).sum()

    gk = lm.compile(lm.grad(outer, argnums=1), backend="llvm")(q, k, v)
    d = rng.standard_normal(k.shape)
    numeric = directional_fd(lambda kk: float(outer(q, kk, v)), [k], [d])
    np.testing.assert_allclose(float((gk * d).sum()), numeric, rtol=1e-6, atol=1e-9)


def test_llvm_runs_the_fused_kernels():
    """SDPA's training step on llvm: one attention kernel forward, one attention_grad kernel
    backward, and no [L, S] value anywhere in the fused graph."""
    rng = np.random.default_rng(5)
    L, S = 40, 48
    q, k, v = (rng.standard_normal(s).astype(F32) for s in ((2, 3, L, 8), (2, 3, S, 8),
                                                            (2, 3, S, 8)))

    def step(q, k, v):
        return lm.value_and_grad(lambda q, k, v: SDPA(q, k, v, is_causal=True).sum(),
                                 argnums=(0, 1, 2))(q, k, v)

    fc = lm.compile(step, backend="llvm")
    fc(q, k, v)
    fused = fc.ir("fused")
    assert "attention(" in fused and "attention_grad(" in fused
    assert "kernel @fused_attention(" in fused and "kernel @fused_attention_grad(" in fused
    assert f",{L},{S}]" not in fused and "matmul" not in fused
    assert "softmax" not in fc.ir("traced") and "attention(" in fc.ir("traced")


def test_multihead_attention_uses_the_op_with_a_causal_mask():
    """MultiheadAttention with a causal bool attn_mask (traced from arange, as the README's
    block writes it) and need_weights=False is one causal attention op, no mask bias."""
    from lamina import nn

    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    x = np.random.default_rng(6).standard_normal((2, 10, 16)).astype(F32)

    def f(x):
        t = x.shape[1]
        causal = lm.arange(t)[None, :] > lm.arange(t)[:, None]
        return mha(x, x, x, attn_mask=causal, need_weights=False)[0]

    traced = str(lm.trace(f, x))
    assert "attention(" in traced and "causal=true" in traced
    fc = lm.compile(f, backend="llvm")
    out = fc(x)
    ref = lm.compile(f, backend="numpy")(x)
    assert_close(out, ref, atol=2e-6)
    # the composite path (need_weights=True) agrees
    composite = lm.compile(lambda x: mha(x, x, x, attn_mask=np.triu(np.ones((10, 10), bool), 1))[0],
                           backend="numpy")(x)
    assert_close(out, composite, atol=2e-6)


def test_errors_name_the_problem():
    q, k = np.zeros((2, 3, 4), F32), np.zeros((2, 5, 4), F32)
    with pytest.raises(lm.ShapeError, match="value"):
        lm.compile(_attention(False, 1.0))(q, k, np.zeros((2, 4, 3), F32))
    with pytest.raises(lm.ShapeError, match="bias"):
        lm.compile(_attention(False, 1.0))(q, k, np.zeros((2, 5, 3), F32), np.zeros((4, 5), F32))
    with pytest.raises(lm.LaminaError, match="attention takes 3 or 4 inputs"):
        lm.compile(_attention(False, 1.0))(q, k)
    with pytest.raises(lm.ShapeError, match="batch axes"):
        lm.compile(_attention(False, 1.0))(q, np.zeros((1, 5, 4), F32), np.zeros((1, 5, 3), F32))


def test_large_head_dims_take_smaller_blocks():
    """Head dims of 520 (the packed blocks are 8 rows then, to stay small on the stack), on
    the fused kernels, forward and backward."""
    rng = np.random.default_rng(7)
    E = 520
    q, k, v = (rng.standard_normal(s).astype(F32) for s in ((1, 19, E), (1, 21, E), (1, 21, 5)))
    fc = lm.compile(_attention(True, 0.05), backend="llvm")
    out = fc(q, k, v)
    assert "attention(" in fc.ir("fused")
    assert_close(out, _attention_ref(q, k, v, causal=True, scale=0.05), atol=2e-6)
    g = rng.standard_normal(out.shape).astype(F32)
    packed = lm.compile(_attention_grad(True, 0.05), backend="llvm")(q, k, v, out, g)
    want = _grad_ref(q, k, v, out, g, causal=True, scale=0.05)
    assert_close(packed, want, atol=2e-6 * max(1.0, float(np.abs(want).max())))
