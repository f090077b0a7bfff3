"""Recurrent layers: ``RNN``, ``LSTM``, ``GRU`` and their cells, with PyTorch's arguments,
parameter names, layouts, gate orders, initialization and results, so that a PyTorch
``state_dict`` loads by name.

Each layer (and direction) is one ``lm.scan`` over the time axis: the trace, and the compiled
code, do not grow with the sequence length, and ``lm.grad`` runs backpropagation through time
as a reverse scan. The input projection of every step, ``x_t @ W_ih.T + b``, does not depend
on the carry, so it is computed for all steps at once before the loop (one large GEMM instead
of T small ones, as cuDNN does); each step multiplies only the hidden state by ``W_hh.T``.

Parameters of layer ``k`` (``_reverse`` appended for the backward direction):

    weight_ih_l{k}  [G*H, in]   (in: input_size for k = 0, else H * directions)
    weight_hh_l{k}  [G*H, H]
    bias_ih_l{k}    [G*H]
    bias_hh_l{k}    [G*H]

with G = 1 (RNN), 4 (LSTM: gates i, f, g, o) or 3 (GRU: r, z, n), all initialized uniform in
±1/sqrt(H).

>>> import numpy as np, lamina as lm
>>> lstm = lm.nn.LSTM(8, 16, num_layers=2)
>>> out, (h, c) = lm.compile(lstm)(np.zeros((5, 3, 8), np.float32))
>>> out.shape, h.shape, c.shape
((5, 3, 16), (2, 3, 16), (2, 3, 16))
"""

from __future__ import annotations

import math

from lamina.frontend import ops
from lamina.frontend.loops import scan
from lamina.frontend.nn import functional as F
from lamina.frontend.nn.module import Module
from lamina.frontend.parameter import Parameter
from lamina.frontend.random import host_rng
from lamina.frontend.trace import user_loc
from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError, ShapeError

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _uniform(shape, bound: float, dtype) -> Parameter:
    return Parameter(host_rng().uniform(-bound, bound, size=shape).astype(dt.dtype(dtype).np))


def _tensor(x):
    """A traced tensor for ``x`` (an array or a tensor), so that ``.ndim`` and ``[...]``
    work."""
    return ops.apply("alias", x) if not hasattr(x, "value") else x


def _t(w):
    return ops.transpose(w)


def _cell(mode: str, x_proj, h, c, w_hh, b_hh, hidden: int):
    """One step: the new (h, c) from the step's input projection ``x_proj`` (x W_ih^T + b_ih,
    plus b_hh where it simply adds) and the previous state."""
    H = hidden
    if mode == "LSTM":
        gates = x_proj + ops.matmul(h, _t(w_hh))
        i = ops.sigmoid(gates[..., 0:H])
        f = ops.sigmoid(gates[..., H:2 * H])
        g = ops.tanh(gates[..., 2 * H:3 * H])
        o = ops.sigmoid(gates[..., 3 * H:4 * H])
        c = f * c + i * g
        return o * ops.tanh(c), c
    if mode == "GRU":
        hh = ops.matmul(h, _t(w_hh))
        if b_hh is not None:
            hh = hh + b_hh
        r = ops.sigmoid(x_proj[..., 0:H] + hh[..., 0:H])
        z = ops.sigmoid(x_proj[..., H:2 * H] + hh[..., H:2 * H])
        n = ops.tanh(x_proj[..., 2 * H:3 * H] + r * hh[..., 2 * H:3 * H])
        return (1.0 - z) * n + z * h, None
    pre = x_proj + ops.matmul(h, _t(w_hh))
    return (ops.tanh(pre) if mode == "RNN_TANH" else ops.relu(pre)), None


def _input_projection(mode: str, x, w_ih, b_ih, b_hh):
    """``x @ W_ih.T + b_ih`` for every step at once (and ``+ b_hh``, except GRU's, whose
    n-gate part is multiplied by r)."""
    p = ops.matmul(x, _t(w_ih))
    if b_ih is not None:
        p = p + b_ih
        if mode != "GRU":
            p = p + b_hh
    return p


class RNNBase(Module):
    """The multi-layer, optionally bidirectional recurrent layer (see the module docstring);
    ``RNN``, ``LSTM`` and ``GRU`` choose the cell."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype=dt.float32):
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LaminaError(f"{type(self).__name__}: {name} must be a positive int, got "
                                  f"{v!r}", user_loc())
        if not 0 <= dropout < 1:
            raise LaminaError(f"{type(self).__name__}: dropout must be in [0, 1), got "
                              f"{dropout}", user_loc())
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        G, H = GATES[mode], hidden_size
        bound = 1.0 / math.sqrt(H)
        for k in range(num_layers):
            ins = input_size if k == 0 else H * self.directions
            for sfx in ("", "_reverse")[:self.directions]:
                setattr(self, f"weight_ih_l{k}{sfx}", _uniform((G * H, ins), bound, dtype))
                setattr(self, f"weight_hh_l{k}{sfx}", _uniform((G * H, H), bound, dtype))
                if bias:
                    setattr(self, f"bias_ih_l{k}{sfx}", _uniform((G * H,), bound, dtype))
                    setattr(self, f"bias_hh_l{k}{sfx}", _uniform((G * H,), bound, dtype))

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _weights(self, k: int, sfx: str):
        get = lambda n: getattr(self, f"{n}_l{k}{sfx}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _direction(self, x, h0, c0, k: int, reverse: bool):
        """One layer in one direction over time-major ``x`` [T, B, in]: (outputs [T, B, H],
        final h, final c)."""
        w_ih, w_hh, b_ih, b_hh = self._weights(k, "_reverse" if reverse else "")
        proj = _input_projection(self.mode, x, w_ih, b_ih, b_hh)
        H, mode = self.hidden_size, self.mode
        gru_b = b_hh if mode == "GRU" else None

        if mode == "LSTM":
            def step(carry, p):
                h, c = _cell(mode, p, carry[0], carry[1], w_hh, gru_b, H)
                return (h, c), h
            (h, c), ys = scan(step, (h0, c0), proj, reverse=reverse)
            return ys, h, c

        def step(h, p):
            h, _ = _cell(mode, p, h, None, w_hh, gru_b, H)
            return h, h
        h, ys = scan(step, h0, proj, reverse=reverse)
        return ys, h, None

    def __call__(self, input, hx=None):
        x = _tensor(input)
        if x.ndim not in (2, 3):
            raise ShapeError(f"{type(self).__name__}: expected an input of rank 2 (unbatched "
                             f"[T, in]) or 3, got {x.type}", user_loc())
        unbatched = x.ndim == 2
        if unbatched:
            x = ops.expand_dims(x, 1)
        elif self.batch_first:
            x = ops.transpose(x, (1, 0, 2))
        T, B, I = x.shape
        if I != self.input_size:
            raise ShapeError(f"{type(self).__name__}: the input has {I} features, the layer "
                             f"takes input_size={self.input_size}", user_loc())
        L, D, H = self.num_layers, self.directions, self.hidden_size
        h0, c0 = self._initial(hx, unbatched, B, x.dtype)
        hs, cs = [], []
        for k in range(L):
            outs = []
            for d in range(D):
                j = k * D + d
                ys, h, c = self._direction(x, h0[j], c0[j] if c0 is not None else None, k,
                                           reverse=d == 1)
                outs.append(ys)
                hs.append(h)
                cs.append(c)
            x = outs[0] if D == 1 else ops.concatenate(outs, axis=-1)
            if self.dropout and k < L - 1:
                x = F.dropout(x, self.dropout, self.training)
        out = x
        h_n = ops.stack(hs)
        c_n = ops.stack(cs) if self.mode == "LSTM" else None
        if unbatched:
            out = out[:, 0]
            h_n = h_n[:, 0]
            c_n = c_n[:, 0] if c_n is not None else None
        elif self.batch_first:
            out = ops.transpose(out, (1, 0, 2))
        return out, ((h_n, c_n) if self.mode == "LSTM" else h_n)

    def _initial(self, hx, unbatched: bool, B: int, dtype):
        """Per layer and direction, the initial h (and c): zeros, or from ``hx``."""
        L, D, H = self.num_layers, self.directions, self.hidden_size
        want = (L * D, H) if unbatched else (L * D, B, H)
        if hx is None:
            z = ops.zeros((B, H), dtype)
            return [z] * (L * D), ([z] * (L * D) if self.mode == "LSTM" else None)
        if self.mode == "LSTM":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise LaminaError("LSTM: hx must be a pair (h_0, c_0)", user_loc())
            parts = list(hx)
        else:
            parts = [hx]
        out = []
        for name, t in zip(("h_0", "c_0"), parts):
            t = _tensor(t)
            if tuple(t.shape) != want:
                raise ShapeError(f"{type(self).__name__}: {name} must have shape "
                                 f"{list(want)}, got {list(t.shape)}", user_loc())
            if unbatched:
                t = ops.expand_dims(t, 1)
            out.append([t[j] for j in range(L * D)])
        return out[0], (out[1] if self.mode == "LSTM" else None)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class RNN(RNNBase):
    """Elman RNN: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or relu with
    ``nonlinearity="relu"``). Returns ``(output, h_n)`` like ``torch.nn.RNN``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, dtype=dt.float32):
        if nonlinearity not in ("tanh", "relu"):
            raise LaminaError(f"RNN: nonlinearity must be 'tanh' or 'relu', got "
                              f"{nonlinearity!r}", user_loc())
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dtype)


class LSTM(RNNBase):
    """Long short-term memory (gates i, f, g, o, as ``torch.nn.LSTM``). Returns
    ``(output, (h_n, c_n))``; ``hx`` is ``(h_0, c_0)`` or None (zeros)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype=dt.float32):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype)


class GRU(RNNBase):
    """Gated recurrent unit (gates r, z, n, as ``torch.nn.GRU``: ``n = tanh(W_in x + b_in +
    r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``). Returns ``(output, h_n)``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype=dt.float32):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype)


class _CellBase(Module):
    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, dtype):
        self.mode = mode
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        G, H = GATES[mode], hidden_size
        bound = 1.0 / math.sqrt(H)
        self.weight_ih = _uniform((G * H, input_size), bound, dtype)
        self.weight_hh = _uniform((G * H, H), bound, dtype)
        if bias:
            self.bias_ih = _uniform((G * H,), bound, dtype)
            self.bias_hh = _uniform((G * H,), bound, dtype)
        else:
            self.bias_ih = self.bias_hh = None

    def _step(self, input, h, c):
        x = _tensor(input)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}: expected an input [batch, "
                             f"{self.input_size}] or [{self.input_size}], got {x.type}",
                             user_loc())
        unbatched = x.ndim == 1
        if unbatched:
            x = ops.expand_dims(x, 0)
        zeros = ops.zeros((x.shape[0], self.hidden_size), x.dtype)
        h = zeros if h is None else (ops.expand_dims(h, 0) if unbatched else h)
        if self.mode == "LSTM":
            c = zeros if c is None else (ops.expand_dims(c, 0) if unbatched else c)
        p = _input_projection(self.mode, x, self.weight_ih, self.bias_ih, self.bias_hh)
        h, c = _cell(self.mode, p, h, c, self.weight_hh,
                     self.bias_hh if self.mode == "GRU" else None, self.hidden_size)
        if unbatched:
            h = h[0]
            c = c[0] if c is not None else None
        return h, c

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")


class RNNCell(_CellBase):
    """One step of ``RNN``: ``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", dtype=dt.float32):
        if nonlinearity not in ("tanh", "relu"):
            raise LaminaError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got "
                              f"{nonlinearity!r}", user_loc())
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, bias, dtype)

    def __call__(self, input, hx=None):
        return self._step(input, hx, None)[0]


class LSTMCell(_CellBase):
    """One step of ``LSTM``: returns ``(h', c')``; ``hx`` is ``(h, c)`` or None (zeros)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dtype=dt.float32):
        super().__init__("LSTM", input_size, hidden_size, bias, dtype)

    def __call__(self, input, hx=None):
        h, c = (None, None) if hx is None else hx
        return self._step(input, h, c)


class GRUCell(_CellBase):
    """One step of ``GRU``: returns ``h'``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dtype=dt.float32):
        super().__init__("GRU", input_size, hidden_size, bias, dtype)

    def __call__(self, input, hx=None):
        return self._step(input, hx, None)[0]
