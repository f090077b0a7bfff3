"""Attention against PyTorch (a test-only oracle): ``nn.functional.scaled_dot_product_attention``
and ``nn.MultiheadAttention`` (weights loaded by name from torch's ``state_dict``), outputs and
gradients (inputs and parameters) on every backend, masks of every kind, a small case on triton
under Triton's interpreter, dropout, and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, directional_fd

import lamina as lm
from lamina import nn
from lamina.frontend.trace import current

torch = pytest.importorskip("torch")

from nn_torch import param_keys, randn, torch_sd  # noqa: E402

F32 = np.float32
SDPA = nn.functional.scaled_dot_product_attention


def _close(got, want, what):
    assert got.shape == want.shape, what
    assert_close(got, want, atol=2e-6 * max(1.0, np.abs(want).max()), err_msg=what)


def _grads(b, loss, xs):
    loss = b.var(b.lift(loss))
    return [b.call("grad", loss, x) for x in xs]


# --- scaled_dot_product_attention -------------------------------------------------------------


def check_sdpa(backend, q, k, v, seed=0, **kw):
    """Output and the gradients of sum(out * r) for q, k, v (and a float mask) vs torch."""
    mask = kw.get("attn_mask")
    float_mask = mask is not None and mask.dtype.kind == "f"
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    tm = torch.tensor(mask, requires_grad=float_mask) if mask is not None else None
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, **{**kw, "attn_mask": tm})
    r = np.random.default_rng(seed + 1).standard_normal(tuple(tout.shape)).astype(F32)
    (tout * torch.tensor(r)).sum().backward()
    want_out = tout.detach().numpy()
    wants = [t.grad.numpy() for t in (tq, tk, tv)] + ([tm.grad.numpy()] if float_mask else [])

    def f(q, k, v, r, m):
        out = SDPA(q, k, v, **{**kw, "attn_mask": m if mask is not None else None})
        xs = [q, k, v] + ([m] if float_mask else [])
        return out, _grads(current().builder, (out * r).sum(), xs)

    out, grads = lm.compile(f, backend=backend)(q, k, v, r, mask if mask is not None else
                                                np.zeros((), F32))
    _close(out, want_out, "output")
    for g, want, name in zip(grads, wants, ["dq", "dk", "dv", "dmask"]):
        _close(g, want, name)


SDPA_CASES = [
    ("plain", (2, 5, 4), (2, 7, 4), (2, 7, 3), {}),
    ("heads", (2, 3, 5, 4), (2, 3, 7, 4), (2, 3, 7, 6), {}),
    ("causal_long_keys", (1, 2, 5, 4), (1, 2, 7, 4), (1, 2, 7, 3), {"is_causal": True}),
    ("causal_short_keys", (2, 6, 3), (2, 4, 3), (2, 4, 5), {"is_causal": True}),
    ("scale", (3, 1, 4), (3, 5, 4), (3, 5, 4), {"scale": 0.3}),
    ("broadcast_batch", (2, 3, 5, 4), (1, 3, 5, 4), (2, 1, 5, 2), {}),
    ("unbatched", (5, 4), (3, 4), (3, 2), {}),
]


@pytest.mark.parametrize("name,qs,ks,vs,kw", SDPA_CASES, ids=[c[0] for c in SDPA_CASES])
def test_sdpa_matches_torch(backend, name, qs, ks, vs, kw):
    check_sdpa(backend, randn(qs, 1), randn(ks, 2), randn(vs, 3), **kw)


def test_sdpa_bool_mask_matches_torch(backend):
    rng = np.random.default_rng(4)
    mask = rng.random((2, 1, 5, 7)) > 0.4
    mask[..., 0] = True  # every query keeps a key
    check_sdpa(backend, randn((2, 3, 5, 4), 1), randn((2, 3, 7, 4), 2), randn((2, 3, 7, 6), 3),
               attn_mask=mask)


def test_sdpa_float_mask_matches_torch(backend):
    mask = randn((5, 7), 5)
    mask[1, 2] = -np.inf
    check_sdpa(backend, randn((2, 3, 5, 4), 1), randn((2, 3, 7, 4), 2), randn((2, 3, 7, 6), 3),
               attn_mask=mask)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_fully_masked_row_is_zero_as_torch(backend, kind):
    """A query with no key left: PyTorch's SDPA gives 0 (no NaN); so does lamina, with zero
    gradients for that row."""
    mask = np.ones((4, 5), bool)
    mask[2] = False
    if kind == "float":
        mask = np.where(mask, 0.0, -np.inf).astype(F32)
        mask[0, 1] = 0.5
    q, k, v = randn((2, 4, 3), 1), randn((2, 5, 3), 2), randn((2, 5, 2), 3)
    out = lm.compile(lambda q, k, v, m: SDPA(q, k, v, attn_mask=m), backend=backend)(q, k, v,
                                                                                     mask)
    assert np.all(out[:, 2] == 0) and np.isfinite(out).all()
    check_sdpa(backend, q, k, v, attn_mask=mask)


def test_sdpa_grouped_query_attention_matches_torch(backend):
    check_sdpa(backend, randn((2, 6, 5, 4), 1), randn((2, 2, 7, 4), 2), randn((2, 2, 7, 3), 3),
               enable_gqa=True, is_causal=True)


@pytest.mark.parametrize("kind", ["causal", "bool_mask_with_empty_row", "float_mask_gqa"])
def test_sdpa_gradients_match_float64_finite_differences(backend, kind):
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal(s) for s in ((2, 4, 5, 3), (2, 2, 6, 3), (2, 2, 6, 2)))
    kw = {"enable_gqa": True}
    if kind == "causal":
        kw["is_causal"] = True
    elif kind == "bool_mask_with_empty_row":
        mask = rng.random((5, 6)) > 0.3
        mask[3] = False
        kw["attn_mask"] = mask
    else:
        kw["attn_mask"] = rng.standard_normal((1, 4, 5, 6))
    o = rng.standard_normal((2, 4, 5, 2))

    def loss(q, k, v):
        return (SDPA(q, k, v, scale=0.7, **kw) * o).sum()

    gq, gk, gv = lm.compile(lm.grad(loss, argnums=(0, 1, 2)), backend=backend)(q, k, v)
    assert gq.dtype == np.float64
    ds = [rng.standard_normal(x.shape) for x in (q, k, v)]
    analytic = float(sum((g * d).sum() for g, d in zip((gq, gk, gv), ds)))
    numeric = directional_fd(lambda *xs: float(loss(*xs)), [q, k, v], ds)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


def test_sdpa_runs_eagerly():
    q, k, v = randn((2, 3, 4), 1), randn((2, 5, 4), 2), randn((2, 5, 3), 3)
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(x) for x in (q, k, v)), is_causal=True).numpy()
    _close(SDPA(q, k, v, is_causal=True), want, "eager")


def test_sdpa_dropout_drops_weights_and_rescales(backend):
    """With value = identity the output is the weights: each dropped (0) or scaled by 1/(1-p)."""
    q, k = randn((4, 6, 3), 1), randn((4, 8, 3), 2)
    v = np.broadcast_to(np.eye(8, dtype=F32), (4, 8, 8)).copy()
    w = SDPA(q, k, v)
    got = lm.compile(lambda q, k, v: SDPA(q, k, v, dropout_p=0.5), backend=backend)(q, k, v)
    kept = got != 0
    assert 0.3 < kept.mean() < 0.7
    assert_close(got[kept], (w / 0.5)[kept], atol=1e-6)


# --- MultiheadAttention -----------------------------------------------------------------------


def check_mha(backend, model, tm, query, key, value, seed=0, **kw):
    """Load ``tm``'s state dict into ``model``; compare the output, the weights and the
    gradients of sum(out * r) + sum(weights * r2) for query, key, value and every parameter."""
    model.load_state_dict(torch_sd(tm))
    self_attn = key is query and value is query
    tx = [torch.tensor(x, requires_grad=True) for x in ((query,) if self_attn else
                                                        (query, key, value))]
    tq, tk, tv = (tx[0],) * 3 if self_attn else tx
    tkw = {a: torch.tensor(b) if isinstance(b, np.ndarray) else b for a, b in kw.items()}
    tm.zero_grad()
    tout, tw = tm(tq, tk, tv, **tkw)
    rng = np.random.default_rng(seed + 1)
    r = rng.standard_normal(tuple(tout.shape)).astype(F32)
    r2 = rng.standard_normal(tuple(tw.shape)).astype(F32) if tw is not None else np.zeros((), F32)
    loss = (tout * torch.tensor(r)).sum() + ((tw * torch.tensor(r2)).sum() if tw is not None
                                             else 0)
    loss.backward()
    want_g = dict(tm.named_parameters())
    params = param_keys(model)
    masks = {a: b for a, b in kw.items() if isinstance(b, np.ndarray)}
    flags = {a: b for a, b in kw.items() if not isinstance(b, np.ndarray)}

    def f(r, r2, *xs, **ms):
        b = current().builder
        q, k, v = (xs[0],) * 3 if self_attn else xs
        out, w = model(q, k, v, **ms, **flags)
        loss = (out * r).sum() + ((w * r2).sum() if w is not None else 0)
        states = [current().read(p) for p, _, _ in params]
        return out, w, _grads(b, loss, list(xs) + states)

    ins = (query,) if self_attn else (query, key, value)
    fn = lm.compile(lambda r, r2, *xs: f(r, r2, *xs[:len(ins)],
                                         **dict(zip(masks, xs[len(ins):]))), backend=backend)
    out, w, grads = fn(r, r2, *ins, *masks.values())
    _close(out, tout.detach().numpy(), "output")
    if tw is None:
        assert w is None
    else:
        _close(w, tw.detach().numpy(), "weights")
    for g, t, name in zip(grads, tx, ["dquery", "dkey", "dvalue"]):
        _close(g, t.grad.numpy(), name)
    for g, (p, key_, perm) in zip(grads[len(ins):], params):
        got = g if perm is None else np.transpose(g, perm)
        _close(got, want_g[key_].grad.numpy(), key_)


def _pair(embed, heads, seed=0, **kw):
    torch.manual_seed(seed)
    tm = torch.nn.MultiheadAttention(embed, heads, **kw)
    with torch.no_grad():  # non-zero biases, so that their gradients and uses are checked
        for name, p in tm.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    return nn.MultiheadAttention(embed, heads, **kw), tm


MHA_CASES = [
    ("self_1head_seqfirst", 8, 1, {}, (5, 2, 8), None, {}),
    ("self_4heads_batchfirst", 8, 4, {"batch_first": True}, (2, 5, 8), None, {}),
    ("cross_odd_lengths", 12, 4, {}, (3, 2, 12), (7, 2, 12), {}),
    ("cross_batchfirst_no_bias", 8, 2, {"batch_first": True, "bias": False}, (2, 3, 8),
     (2, 5, 8), {}),
    ("per_head_weights", 8, 4, {}, (5, 2, 8), None, {"average_attn_weights": False}),
    ("no_weights", 8, 2, {}, (5, 3, 8), None, {"need_weights": False}),
    ("unbatched", 8, 2, {}, (5, 8), (3, 8), {}),
    ("kdim_vdim", 8, 2, {"kdim": 5, "vdim": 3, "batch_first": True}, (2, 4, 8), None, {}),
]


@pytest.mark.parametrize("name,embed,heads,kw,qs,ks,fwd", MHA_CASES,
                         ids=[c[0] for c in MHA_CASES])
def test_mha_matches_torch(backend, name, embed, heads, kw, qs, ks, fwd):
    model, tm = _pair(embed, heads, **kw)
    query = randn(qs, 1)
    if name == "kdim_vdim":
        key, value = randn((2, 6, 5), 2), randn((2, 6, 3), 3)
    elif ks is None:
        key = value = query
    else:
        key, value = randn(ks, 2), randn(ks, 3)
    check_mha(backend, model, tm, query, key, value, **fwd)


def test_mha_causal_and_key_padding_masks_match_torch(backend):
    model, tm = _pair(8, 2, batch_first=True)
    x = randn((3, 5, 8), 1)
    causal = np.triu(np.ones((5, 5), bool), 1)
    kpm = np.zeros((3, 5), bool)
    kpm[1, 3:] = True
    kpm[2, 4] = True
    check_mha(backend, model, tm, x, x, x, attn_mask=causal, key_padding_mask=kpm,
              is_causal=True)


def test_mha_float_and_3d_masks_match_torch(backend):
    model, tm = _pair(8, 4)
    q, kv = randn((4, 2, 8), 1), randn((6, 2, 8), 2)
    am = randn((2 * 4, 4, 6), 3)
    kpm = randn((2, 6), 4)
    check_mha(backend, model, tm, q, kv, kv, attn_mask=am, key_padding_mask=kpm)


def test_mha_fully_padded_sequence_gives_zero_attention():
    """Every key of a sequence padded out: lamina's attention gives 0 there (the output is
    out_proj's bias), as PyTorch's need_weights=False path in training mode does (its
    need_weights=True and inference fast paths give NaN)."""
    model, tm = _pair(8, 2, batch_first=True)
    x = randn((2, 3, 8), 1)
    kpm = np.array([[True] * 3, [False, False, True]])
    check_mha("numpy", model, tm, x, x, x, key_padding_mask=kpm, need_weights=False)
    out, w = lm.compile(lambda x: model(x, x, x, key_padding_mask=kpm))(x)
    assert_close(out[0], np.broadcast_to(model.out_proj.b.host_value(), (3, 8)))
    assert np.all(w[0] == 0) and np.isfinite(w).all()


def test_mha_init_and_names_are_torch_s():
    model = nn.MultiheadAttention(16, 4)
    assert list(model.state_dict()) == ["in_proj_weight", "in_proj_bias", "out_proj.w",
                                        "out_proj.b"]
    sd = torch_sd(torch.nn.MultiheadAttention(16, 4))
    assert {k: v.shape for k, v in sd.items()} == {
        "in_proj_weight": (48, 16), "in_proj_bias": (48,), "out_proj.weight": (16, 16),
        "out_proj.bias": (16,)}
    w = model.in_proj_weight.host_value()
    bound = np.sqrt(6 / (16 + 48))  # xavier_uniform_ on [3E, E]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert not model.in_proj_bias.host_value().any() and not model.out_proj.b.host_value().any()
    sep = nn.MultiheadAttention(8, 2, kdim=5, vdim=3)
    assert [k for k in sep.state_dict()] == ["q_proj_weight", "k_proj_weight", "v_proj_weight",
                                             "in_proj_bias", "out_proj.w", "out_proj.b"]
    assert sep.k_proj_weight.shape == (8, 5)


def test_mha_dropout_in_training_only(backend):
    model = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    x = randn((2, 6, 8), 1)
    fn = lm.compile(lambda x: model(x, x, x, average_attn_weights=False), backend=backend)
    model.eval()
    _, w_eval = fn(x)
    model.train()
    _, w_train = fn(x)
    kept = w_train != 0
    assert 0.3 < kept.mean() < 0.7
    assert_close(w_train[kept], (w_eval / 0.5)[kept], atol=1e-6)


# --- triton under the interpreter -------------------------------------------------------------


@pytest.fixture
def interpreted(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")
    return "triton"


def test_sdpa_on_triton_interpreter(interpreted):
    mask = np.ones((3, 4), bool)
    mask[1, :2] = False
    check_sdpa(interpreted, randn((2, 3, 2), 1), randn((2, 4, 2), 2), randn((2, 4, 3), 3),
               attn_mask=mask)


def test_mha_on_triton_interpreter(interpreted):
    model, tm = _pair(4, 2, batch_first=True)
    x = randn((1, 3, 4), 1)
    check_mha(interpreted, model, tm, x, x, x, key_padding_mask=np.array([[False, False, True]]))


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shapes,kw,match", [
    (((2, 3, 4), (2, 5, 4), (2, 5, 3)), {"attn_mask": np.ones((3, 5), bool), "is_causal": True},
     "not both"),
    (((2, 3, 4), (2, 5, 3), (2, 5, 3)), {}, "same feature size"),
    (((2, 3, 4), (2, 5, 4), (2, 4, 3)), {}, "same length"),
    (((2, 3, 4), (3, 5, 4), (3, 5, 3)), {}, "do not broadcast"),
    (((4,), (5, 4), (5, 3)), {}, "at least 2 axes"),
    (((2, 3, 4), (2, 5, 4), (2, 5, 3)), {"attn_mask": np.ones((3, 5), np.int32)},
     "attn_mask must be bool"),
    (((2, 3, 4), (2, 5, 4), (2, 5, 3)), {"attn_mask": np.ones((3, 4), bool)},
     "does not broadcast to the scores"),
    (((2, 3, 4), (2, 5, 4), (2, 5, 3)), {"dropout_p": 1.0}, "dropout_p"),
    (((1, 3, 3, 4), (1, 2, 5, 4), (1, 2, 5, 3)), {"enable_gqa": True}, "not a multiple"),
])
def test_sdpa_errors(shapes, kw, match):
    q, k, v = (np.zeros(s, F32) for s in shapes)
    with pytest.raises(lm.LaminaError, match=match):
        lm.compile(lambda q, k, v: SDPA(q, k, v, **kw))(q, k, v)


def test_mha_errors():
    with pytest.raises(lm.LaminaError, match="multiple of num_heads"):
        nn.MultiheadAttention(10, 4)
    with pytest.raises(lm.LaminaError, match="add_bias_kv"):
        nn.MultiheadAttention(8, 2, add_bias_kv=True)
    model = nn.MultiheadAttention(8, 2)
    x = np.zeros((3, 2, 8), F32)
    cases = [
        (lambda x: model(x, x, x, is_causal=True), "give attn_mask too"),
        (lambda x: model(x, x[..., :4], x), "features"),
        (lambda x: model(x, x[:, :1], x[:, :1]), "same batch size"),
        (lambda x: model(x, x, x, attn_mask=np.zeros((3, 4), bool)), "attn_mask"),
        (lambda x: model(x, x, x, key_padding_mask=np.zeros((3, 2), bool)), "key_padding_mask"),
        (lambda x: model(x, x, x, attn_mask=np.zeros((3, 3), np.int64)), "must be bool"),
        (lambda x: model(x[0], x, x), "3-d"),
    ]
    for fn, match in cases:
        with pytest.raises(lm.LaminaError, match=match):
            lm.compile(fn)(x)


def test_mha_runs_eagerly():
    model, tm = _pair(8, 2, batch_first=True)
    model.load_state_dict(torch_sd(tm))
    x = randn((2, 5, 8), 1)
    out, w = model(x, x, x)
    want_out, want_w = tm(*(torch.tensor(x),) * 3)
    _close(out, want_out.detach().numpy(), "output")
    _close(w, want_w.detach().numpy(), "weights")
    assert "embed_dim=8, num_heads=2, batch_first=True" in repr(model)
