"""The network workloads of the benchmark suite: their inputs (fixed seed, float32) and their
numpy forward and backward passes, written by hand. In float64 they are the references every
implementation is checked against; in float32 they are the numpy peer.

    cnn_train          x [N, 1, 28, 28] NCHW, y [N] int64 labels; conv3x3(1->16, pad 1) + ReLU +
                       maxpool 2; conv3x3(16->32, pad 1) + ReLU + maxpool 2; flatten (32*7*7 =
                       1568); linear -> 10; mean cross-entropy; one SGD step (lr 0.1).
    transformer_train  x, target [B, T, E]: a pre-LN block, h = x + Attn(LN1(x)),
                       out = h + fc2(gelu_tanh(fc1(LN2(h)))), causal multi-head attention with a
                       fused qkv projection (PyTorch's in_proj_weight [3E, E]), MLP hidden 4E;
                       loss = mean((out - target)^2); one SGD step (lr 0.1).
    attention          q, k, v, dout [B, H, T, D]: out = causal softmax(q k^T / sqrt(D)) v and
                       the gradients of sum(out * dout) for q, k and v (forward + backward).
    lstm_train         x [T, B, I] time-major: a single-layer LSTM (PyTorch's nn.LSTM: gates
                       i, f, g, o; h0 = c0 = 0), loss = mean(h_T^2), backpropagation through
                       time, one SGD step (lr 0.1).

The parameters are numpy arrays in PyTorch's ``state_dict`` names and layouts (a Linear's
``weight`` is [out, in]; MultiheadAttention's ``in_proj_weight`` [3E, E]), so that every
implementation loads the same values by name. The step functions work in any float dtype: they
update the given parameter dict in place and return the loss (of the parameters before the
update).
"""

from __future__ import annotations

import math

import numpy as np

GELU_C = math.sqrt(2.0 / math.pi)
LR = 0.1
EPS = 1e-5


# --- sizes and inputs ---------------------------------------------------------------------------


def cnn_sizes(quick: bool) -> dict:
    if quick:
        return {"n": 4, "hw": 8, "c1": 4, "c2": 8, "classes": 10}
    return {"n": 64, "hw": 28, "c1": 16, "c2": 32, "classes": 10}


def transformer_sizes(quick: bool) -> dict:
    if quick:
        return {"b": 2, "t": 8, "e": 16, "heads": 2, "hidden": 64}
    return {"b": 8, "t": 128, "e": 256, "heads": 4, "hidden": 1024}


def lstm_sizes(quick: bool, steps: int | None = None) -> dict:
    s = {"t": 5, "b": 4, "i": 8, "h": 16} if quick else {"t": 50, "b": 32, "i": 64, "h": 128}
    if steps is not None:
        s["t"] = steps
    return s


def lstm_inputs(quick: bool, seed: int = 0, steps: int | None = None) -> dict:
    """The LSTM's sequence and initial parameters (PyTorch's init: U(+-1/sqrt(hidden)))."""
    s = lstm_sizes(quick, steps)
    rng = np.random.default_rng(seed)
    H, I = s["h"], s["i"]
    params = {"lstm.weight_ih_l0": _uniform(rng, (4 * H, I), H),
              "lstm.weight_hh_l0": _uniform(rng, (4 * H, H), H),
              "lstm.bias_ih_l0": _uniform(rng, (4 * H,), H),
              "lstm.bias_hh_l0": _uniform(rng, (4 * H,), H)}
    x = rng.standard_normal((s["t"], s["b"], I)).astype(np.float32)
    return {"x": x, "params": params, "lr": LR}


def attention_sizes(quick: bool) -> tuple[int, int, int, int]:
    return (1, 2, 16, 8) if quick else (4, 8, 2048, 64)


def _uniform(rng, shape, fan_in: int) -> np.ndarray:
    """PyTorch's default init of Linear and Conv weights and biases: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def _grid(a, step: float, odd: bool = False) -> np.ndarray:
    """``a`` rounded to a multiple of ``step`` (with ``odd``: to an odd multiple of step / 2)."""
    a = np.asarray(a, np.float64)
    q = np.floor(a / step) + 0.5 if odd else np.round(a / step)
    return (q * step).astype(np.float32)


def cnn_inputs(quick: bool, seed: int = 0) -> dict:
    """The CNN's batch, labels and initial parameters (PyTorch's default init).

    The images and the conv parameters lie on coarse binary grids (pixels k/8, conv1 weights
    k/64, conv2 weights k/128, biases odd multiples of half the step of the products they are
    added to) so that both convolutions are exact in float32 in any summation order (checked
    below) and never exactly 0. Then every implementation sees the same values in each max-pool
    window as the float64 reference, and sends the gradient to the same element (the first
    maximum, as PyTorch): without the grids, two values of a window 1e-8 apart tie in float32
    and not in float64, and one such window among the 200,704 of the full-size batch moves
    conv1's weight update by 1%.
    """
    s = cnn_sizes(quick)
    rng = np.random.default_rng(seed)
    c1, c2, hw = s["c1"], s["c2"], s["hw"]
    flat = c2 * (hw // 4) ** 2
    params = {"conv1.weight": _grid(_uniform(rng, (c1, 1, 3, 3), 9), 1 / 64),
              "conv1.bias": _grid(_uniform(rng, (c1,), 9), 1 / 512, odd=True),
              "conv2.weight": _grid(_uniform(rng, (c2, c1, 3, 3), 9 * c1), 1 / 128),
              "conv2.bias": _grid(_uniform(rng, (c2,), 9 * c1), 2.0 ** -17, odd=True),
              "fc.weight": _uniform(rng, (s["classes"], flat), flat),
              "fc.bias": _uniform(rng, (s["classes"],), flat)}
    x = _grid(rng.random((s["n"], 1, hw, hw)) - 1 / 16, 1 / 8)
    y = rng.integers(0, s["classes"], s["n"]).astype(np.int64)
    _check_exact_convs(x, params)
    return {"x": x, "y": y, "params": params, "lr": LR}


def _check_exact_convs(x, p) -> None:
    """Both convolutions' partial sums are multiples of their grid step below 2^24 steps (so
    float32 holds them exactly, in any order)."""
    h, _ = _conv3x3(np.abs(x.astype(np.float64)), np.abs(p["conv1.weight"].astype(np.float64)),
                    np.abs(p["conv1.bias"].astype(np.float64)))
    vmax = h.max()  # bounds every conv1 output, hence every conv2 input
    c1 = p["conv2.weight"].shape[1]
    bound2 = 9 * c1 * vmax * np.abs(p["conv2.weight"]).max() + np.abs(p["conv2.bias"]).max()
    assert h.max() < 2 ** 24 / 1024 and bound2 < 2 ** 24 * 2.0 ** -18, (h.max(), bound2)


def transformer_inputs(quick: bool, seed: int = 0) -> dict:
    s = transformer_sizes(quick)
    rng = np.random.default_rng(seed)
    e, hidden = s["e"], s["hidden"]
    xavier = math.sqrt(6.0 / (e + 3 * e))  # PyTorch's xavier_uniform_ of in_proj_weight
    params = {"ln1.weight": (1 + 0.1 * rng.standard_normal(e)).astype(np.float32),
              "ln1.bias": (0.1 * rng.standard_normal(e)).astype(np.float32),
              "attn.in_proj_weight": rng.uniform(-xavier, xavier, (3 * e, e)).astype(np.float32),
              "attn.in_proj_bias": _uniform(rng, (3 * e,), e),
              "attn.out_proj.weight": _uniform(rng, (e, e), e),
              "attn.out_proj.bias": _uniform(rng, (e,), e),
              "ln2.weight": (1 + 0.1 * rng.standard_normal(e)).astype(np.float32),
              "ln2.bias": (0.1 * rng.standard_normal(e)).astype(np.float32),
              "fc1.weight": _uniform(rng, (hidden, e), e),
              "fc1.bias": _uniform(rng, (hidden,), e),
              "fc2.weight": _uniform(rng, (e, hidden), hidden),
              "fc2.bias": _uniform(rng, (e,), hidden)}
    shape = (s["b"], s["t"], e)
    x = rng.standard_normal(shape, dtype=np.float32)
    target = rng.standard_normal(shape, dtype=np.float32)
    return {"x": x, "target": target, "params": params, "heads": s["heads"], "lr": LR}


def attention_inputs(quick: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shape = attention_sizes(quick)
    return {k: rng.standard_normal(shape, dtype=np.float32) for k in ("q", "k", "v", "dout")}


# --- building blocks: forward returns (y, backward) ---------------------------------------------


def _conv3x3(x, w, b):
    """Conv 3x3, stride 1, padding 1 (NCHW, OIHW) through im2col."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # n c h w 3 3
    cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * wd, c * 9)
    o = w.shape[0]
    y = (cols @ w.reshape(o, c * 9).T + b).reshape(n, h, wd, o).transpose(0, 3, 1, 2)

    def backward(dy):
        d = dy.transpose(0, 2, 3, 1).reshape(n * h * wd, o)
        dw = (d.T @ cols).reshape(w.shape)
        dcols = (d @ w.reshape(o, c * 9)).reshape(n, h, wd, c, 3, 3)
        dxp = np.zeros_like(xp)
        for i in range(3):
            for j in range(3):
                dxp[:, :, i:i + h, j:j + wd] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        return dxp[:, :, 1:-1, 1:-1], dw, d.sum(axis=0)

    return y, backward


def _maxpool2(x):
    """Max pool 2x2, stride 2; the gradient goes to the first maximum of each window in
    row-major order (PyTorch's choice among ties)."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5) \
        .reshape(n, c, h // 2, w // 2, 4)
    arg = win.argmax(axis=-1)
    y = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]

    def backward(dy):
        dwin = np.zeros_like(win)
        np.put_along_axis(dwin, arg[..., None], dy[..., None], axis=-1)
        return dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5) \
            .reshape(n, c, h, w)

    return y, backward


def _layernorm(x, g, b):
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    rstd = 1.0 / np.sqrt((d * d).mean(axis=-1, keepdims=True) + EPS)
    xhat = d * rstd

    def backward(dy):
        axes = tuple(range(dy.ndim - 1))
        dg, db = (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
        dxh = dy * g
        dx = rstd * (dxh - dxh.mean(axis=-1, keepdims=True)
                     - xhat * (dxh * xhat).mean(axis=-1, keepdims=True))
        return dx, dg, db

    return xhat * g + b, backward


def _gelu_tanh(u):
    t = np.tanh(GELU_C * (u + 0.044715 * u ** 3))

    def backward(dy):
        return dy * (0.5 * (1 + t) + 0.5 * u * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * u * u))

    return 0.5 * u * (1 + t), backward


def _linear(x, w, b):
    """``x @ w.T + b`` with PyTorch's weight layout [out, in]; x [..., in]."""
    y = x @ w.T + b

    def backward(dy):
        d2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        return dy @ w, d2.T @ x2, d2.sum(axis=0)

    return y, backward


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(D) + causal mask) v over [..., T, D] (all leading axes batched),
    and its backward: dout -> (dq, dk, dv)."""
    t, d = q.shape[-2:]
    scale = 1.0 / math.sqrt(d)
    s = q @ np.swapaxes(k, -1, -2) * scale
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)

    def backward(dout):
        dv = np.swapaxes(p, -1, -2) @ dout
        dp = dout @ np.swapaxes(v, -1, -2)
        ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * scale
        return ds @ k, np.swapaxes(ds, -1, -2) @ q, dv

    return p @ v, backward


def attention_fwd_bwd(q, k, v, dout):
    """[out, dq, dk, dv] of causal attention over [B, H, T, D], one (batch, head) at a time so
    that only one T x T matrix is alive (a float64 [4, 8, 2048, 2048] would be 1 GiB)."""
    res = [np.empty_like(q) for _ in range(4)]
    for bh in np.ndindex(*q.shape[:-2]):
        out, backward = causal_attention(q[bh], k[bh], v[bh])
        res[0][bh] = out
        res[1][bh], res[2][bh], res[3][bh] = backward(dout[bh])
    return res


# --- the training steps -------------------------------------------------------------------------


def _sgd(params: dict, grads: dict, lr: float) -> None:
    for name, g in grads.items():
        params[name] -= lr * g


def cnn_step(params: dict, x, y, lr: float):
    """One SGD step of the CNN (see the module docstring); updates ``params`` in place."""
    p = params
    h1, conv1_b = _conv3x3(x, p["conv1.weight"], p["conv1.bias"])
    r1 = np.maximum(h1, 0)
    m1, pool1_b = _maxpool2(r1)
    h2, conv2_b = _conv3x3(m1, p["conv2.weight"], p["conv2.bias"])
    r2 = np.maximum(h2, 0)
    m2, pool2_b = _maxpool2(r2)
    flat = m2.reshape(len(x), -1)
    logits, fc_b = _linear(flat, p["fc.weight"], p["fc.bias"])

    rows = np.arange(len(y))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    se = e.sum(axis=1, keepdims=True)
    loss = -(z[rows, y] - np.log(se[:, 0])).mean()
    dz = e / se
    dz[rows, y] -= 1
    dz /= len(y)

    g = {}
    dflat, g["fc.weight"], g["fc.bias"] = fc_b(dz)
    dr2 = pool2_b(dflat.reshape(m2.shape)) * (h2 > 0)
    dm1, g["conv2.weight"], g["conv2.bias"] = conv2_b(dr2)
    dr1 = pool1_b(dm1) * (h1 > 0)
    _, g["conv1.weight"], g["conv1.bias"] = conv1_b(dr1)
    _sgd(params, g, lr)
    return loss


def transformer_forward(params: dict, x, heads: int):
    """The block's output and its backward: dout -> parameter gradients (a dict)."""
    p = params
    bsz, t, e = x.shape
    a, ln1_b = _layernorm(x, p["ln1.weight"], p["ln1.bias"])
    qkv, qkv_b = _linear(a, p["attn.in_proj_weight"], p["attn.in_proj_bias"])

    def split(z):  # [B, T, E] -> [B, H, T, D]
        return z.reshape(bsz, t, heads, e // heads).transpose(0, 2, 1, 3)

    q, k, v = (split(qkv[..., i * e:(i + 1) * e]) for i in range(3))
    o, attn_b = causal_attention(q, k, v)
    o = o.transpose(0, 2, 1, 3).reshape(bsz, t, e)
    att, out_b = _linear(o, p["attn.out_proj.weight"], p["attn.out_proj.bias"])
    h = x + att
    c, ln2_b = _layernorm(h, p["ln2.weight"], p["ln2.bias"])
    u, fc1_b = _linear(c, p["fc1.weight"], p["fc1.bias"])
    gl, gelu_b = _gelu_tanh(u)
    m, fc2_b = _linear(gl, p["fc2.weight"], p["fc2.bias"])

    def backward(dout):
        g = {}
        dgl, g["fc2.weight"], g["fc2.bias"] = fc2_b(dout)
        dc, g["fc1.weight"], g["fc1.bias"] = fc1_b(gelu_b(dgl))
        dh_ln, g["ln2.weight"], g["ln2.bias"] = ln2_b(dc)
        dh = dout + dh_ln
        do, g["attn.out_proj.weight"], g["attn.out_proj.bias"] = out_b(dh)
        dq, dk, dv = attn_b(split(do))
        dqkv = np.concatenate([z.transpose(0, 2, 1, 3).reshape(bsz, t, e)
                               for z in (dq, dk, dv)], axis=-1)
        da, g["attn.in_proj_weight"], g["attn.in_proj_bias"] = qkv_b(dqkv)
        _, g["ln1.weight"], g["ln1.bias"] = ln1_b(da)
        return g

    return h + m, backward


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_step(params: dict, x, lr: float):
    """One SGD step of the LSTM with loss mean(h_T^2), backpropagation through time written
    out; updates ``params`` in place."""
    w_ih, w_hh = params["lstm.weight_ih_l0"], params["lstm.weight_hh_l0"]
    b = params["lstm.bias_ih_l0"] + params["lstm.bias_hh_l0"]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    h = np.zeros((B, H), x.dtype)
    c = np.zeros((B, H), x.dtype)
    saved = []
    for t in range(T):
        g = x[t] @ w_ih.T + h @ w_hh.T + b
        i, f = _sigmoid(g[:, :H]), _sigmoid(g[:, H:2 * H])
        gg, o = np.tanh(g[:, 2 * H:3 * H]), _sigmoid(g[:, 3 * H:])
        c_new = f * c + i * gg
        tc = np.tanh(c_new)
        saved.append((h, c, i, f, gg, o, tc))
        h, c = o * tc, c_new
    loss = (h * h).mean()
    dh, dc = 2 * h / h.size, np.zeros_like(c)
    gw_ih, gw_hh, gb = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros_like(b)
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, gg, o, tc = saved[t]
        do = dh * tc
        dc = dc + dh * o * (1 - tc * tc)
        dg = np.concatenate([dc * gg * i * (1 - i), dc * c_prev * f * (1 - f),
                             dc * i * (1 - gg * gg), do * o * (1 - o)], axis=1)
        gw_ih += dg.T @ x[t]
        gw_hh += dg.T @ h_prev
        gb += dg.sum(axis=0)
        dh, dc = dg @ w_hh, dc * f
    _sgd(params, {"lstm.weight_ih_l0": gw_ih, "lstm.weight_hh_l0": gw_hh,
                  "lstm.bias_ih_l0": gb, "lstm.bias_hh_l0": gb}, lr)
    return loss


def transformer_step(params: dict, x, target, heads: int, lr: float):
    """One SGD step of the pre-LN block with loss mean((out - target)^2); updates ``params``."""
    out, backward = transformer_forward(params, x, heads)
    diff = out - target
    loss = (diff * diff).mean()
    _sgd(params, backward(2 * diff / diff.size), lr)
    return loss
