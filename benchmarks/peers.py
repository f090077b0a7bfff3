"""Peer implementations of the benchmark workloads: numpy, PyTorch eager, ``torch.compile`` and
JAX ``jax.jit`` (CPU).

Every peer gets the same numpy inputs (``run.py`` allocates them once) and builds a
:class:`Runner` per workload: ``call()`` runs the workload once and returns when the result is
ready (JAX: ``block_until_ready``); ``fetch(out)`` turns what ``call`` returned into numpy arrays
for the correctness check. Device copies (``torch.from_numpy``, ``jax.device_put``) and parameter
copies are made in ``build``, outside the timed region. A peer whose library is not installed
reports ``available = False`` and a note; nothing imports torch or jax unless that peer is asked
for.

Workloads and their inputs (dicts of numpy arrays; ``run.py`` documents the sizes):

    gelu       x (R, C), a (C,), b (C,)          y = gelu_tanh(x * a + b)
    softmax    x (R, C)                          softmax over each row
    layernorm  x (R, C), g (C,), b (C,), eps     (x - mean) / sqrt(var + eps) * g + b, per row
    matmul     a (M, K), b (K, N)                a @ b
    mlp_step   x (B, D), y (B,) int64, params [w1, b1, w2, b2, w3, b3] (w: (in, out)), lr
               one SGD step of relu MLP + mean cross-entropy; ``call`` returns the loss and
               updates the peer's own copy of the parameters; ``fetch`` gives [loss, *params].
    cnn_train, transformer_train
               the network steps of ``nets.py``: x, y (or target), params (a dict in PyTorch's
               state_dict names and layouts), lr (and heads); ``fetch`` gives [loss, *params]
               in the dict's order.
    attention  q, k, v, dout [B, H, T, D]: causal scaled dot-product attention forward and the
               gradients of sum(out * dout); ``fetch`` gives [out, dq, dk, dv].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import nets  # benchmarks/ is on sys.path (run.py and gpu.py put it there)

GELU_C = math.sqrt(2.0 / math.pi)
WORKLOADS = ("gelu", "softmax", "layernorm", "matmul", "mlp_step", "cnn_train",
             "transformer_train", "attention", "lstm_train")


@dataclass
class Runner:
    """One workload on one implementation, ready to time."""

    call: Callable[[], Any]                         # one run, synchronized
    fetch: Callable[[Any], list[np.ndarray]]        # call's result -> numpy arrays (checks)
    notes: list[str] = field(default_factory=list)


# --- numpy: also the float64 reference ----------------------------------------------------------


def np_gelu(x, a, b):
    u = x * a + b
    return 0.5 * u * (1.0 + np.tanh(GELU_C * (u + 0.044715 * u * u * u)))


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_layernorm(x, g, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(axis=-1, keepdims=True)
    return d / np.sqrt(var + eps) * g + b


def np_mlp_step(params: list[np.ndarray], x, y, lr: float) -> float:
    """One SGD step, hand-written forward and backward; updates ``params`` in place and returns
    the loss (of the parameters before the update). Works in any float dtype."""
    layers = [(params[i], params[i + 1]) for i in range(0, len(params), 2)]
    acts, pre = [x], []
    h = x
    for k, (w, b) in enumerate(layers):
        z = h @ w + b
        if k < len(layers) - 1:
            pre.append(z)
            h = np.maximum(z, 0)
            acts.append(h)
        else:
            logits = z
    rows = np.arange(len(y))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    loss = -(z[rows, y] - np.log(s[:, 0])).mean()
    dz = e / s
    dz[rows, y] -= 1
    dz /= len(y)
    grads = []
    for k in range(len(layers) - 1, -1, -1):
        w, _ = layers[k]
        grads.append((acts[k].T @ dz, dz.sum(axis=0)))
        if k > 0:
            dz = (dz @ w.T) * (pre[k - 1] > 0)
    for (w, b), (gw, gb) in zip(layers, reversed(grads)):
        w -= lr * gw
        b -= lr * gb
    return loss


class Peer:
    """Base: ``name``, ``available``, ``note``, ``version``; ``build(workload, inputs)``."""

    name = "?"
    available = True
    note = ""
    version = ""

    def build(self, workload: str, inputs: dict) -> Runner:
        return getattr(self, workload)(**inputs)


class NumpyPeer(Peer):
    name = "numpy"

    def __init__(self, threads: int):
        self.version = np.__version__

    def gelu(self, x, a, b):
        return Runner(lambda: np_gelu(x, a, b), lambda out: [out])

    def softmax(self, x):
        return Runner(lambda: np_softmax(x), lambda out: [out])

    def layernorm(self, x, g, b, eps):
        return Runner(lambda: np_layernorm(x, g, b, eps), lambda out: [out])

    def matmul(self, a, b):
        return Runner(lambda: a @ b, lambda out: [out])

    def mlp_step(self, x, y, params, lr):
        own = [p.copy() for p in params]
        return Runner(lambda: np_mlp_step(own, x, y, lr),
                      lambda loss: [np.asarray(loss, np.float32), *(p.copy() for p in own)])

    def cnn_train(self, x, y, params, lr):
        own = {k: v.copy() for k, v in params.items()}
        return Runner(lambda: nets.cnn_step(own, x, y, lr),
                      lambda loss: [np.asarray(loss, np.float32),
                                    *(v.copy() for v in own.values())])

    def transformer_train(self, x, target, params, heads, lr):
        own = {k: v.copy() for k, v in params.items()}
        return Runner(lambda: nets.transformer_step(own, x, target, heads, lr),
                      lambda loss: [np.asarray(loss, np.float32),
                                    *(v.copy() for v in own.values())])

    def attention(self, q, k, v, dout):
        return Runner(lambda: nets.attention_fwd_bwd(q, k, v, dout), lambda out: list(out))

    def lstm_train(self, x, params, lr):
        own = {k: v.copy() for k, v in params.items()}
        return Runner(lambda: nets.lstm_step(own, x, lr),
                      lambda loss: [np.asarray(loss, np.float32),
                                    *(v.copy() for v in own.values())])


# --- PyTorch ------------------------------------------------------------------------------------


class TorchPeer(Peer):
    """PyTorch eager, or ``torch.compile(mode=...)`` when ``mode`` is given (``"default"`` is
    torch.compile's default mode). Subclasses may place tensors elsewhere (``device``) and
    fetch results their own way (``_numpy``)."""

    device = None  # where parameters live (None: the CPU)

    def __init__(self, threads: int, mode: str | None = None):
        self.mode = mode
        self.name = "torch" if mode is None else (
            "torch.compile" if mode == "default" else f"torch.compile[{mode}]")
        try:
            import torch
        except ImportError as e:
            self.available, self.note = False, f"not installed ({e.name})"
            return
        self.torch = torch
        torch.set_num_threads(threads)
        self.version = torch.__version__

    def _fn(self, fn):
        if self.mode is None:
            return fn
        kwargs = {} if self.mode == "default" else {"mode": self.mode}
        return self.torch.compile(fn, **kwargs)

    def _t(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a))

    @staticmethod
    def _numpy(t) -> np.ndarray:
        """A result tensor as a fresh numpy array."""
        return t.detach().numpy().copy()

    def _simple(self, fn, *arrays):
        f = self._fn(fn)
        ts = [self._t(a) for a in arrays]

        def call():
            with self.torch.inference_mode():
                return f(*ts)

        return Runner(call, lambda out: [out.numpy()])

    def gelu(self, x, a, b):
        F = self.torch.nn.functional
        return self._simple(lambda x, a, b: F.gelu(x * a + b, approximate="tanh"), x, a, b)

    def softmax(self, x):
        return self._simple(lambda x: self.torch.softmax(x, dim=-1), x)

    def layernorm(self, x, g, b, eps):
        F = self.torch.nn.functional
        return self._simple(lambda x, g, b: F.layer_norm(x, (x.shape[-1],), g, b, eps), x, g, b)

    def matmul(self, a, b):
        return self._simple(lambda a, b: a @ b, a, b)

    def mlp_step(self, x, y, params, lr):
        torch = self.torch
        F = torch.nn.functional
        ps = [torch.tensor(p, device=self.device, requires_grad=True) for p in params]
        opt = torch.optim.SGD(ps, lr=lr)
        tx, ty = self._t(x), self._t(y)

        def step(x, y):
            h = x
            for k in range(0, len(ps) - 2, 2):
                h = torch.relu(h @ ps[k] + ps[k + 1])
            loss = F.cross_entropy(h @ ps[-2] + ps[-1], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        f = self._fn(step)
        return Runner(lambda: f(tx, ty),
                      lambda loss: [self._numpy(loss), *map(self._numpy, ps)])

    def _train(self, model, params, loss_fn, args, lr):
        """One SGD step of ``model`` (loaded with ``params`` by name) on ``loss_fn(model,
        *args)``: zero_grad, backward, step; torch.compile compiles the whole step."""
        torch = self.torch
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})
        model.to(self.device)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        targs = [self._t(a) for a in args]

        def step(*args):
            loss = loss_fn(model, *args)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        f = self._fn(step)
        state = model.state_dict()
        return Runner(lambda: f(*targs),
                      lambda loss: [self._numpy(loss), *(self._numpy(state[k]) for k in params)])

    def cnn_train(self, x, y, params, lr):
        F = self.torch.nn.functional
        classes, flat = params["fc.weight"].shape
        model = _torch_models(self.torch)[0](params["conv1.weight"].shape[0],
                                             params["conv2.weight"].shape[0], flat, classes)
        return self._train(model, params, lambda m, x, y: F.cross_entropy(m(x), y), (x, y), lr)

    def transformer_train(self, x, target, params, heads, lr):
        F = self.torch.nn.functional
        hidden, e = params["fc1.weight"].shape
        model = _torch_models(self.torch)[1](e, heads, hidden, x.shape[1])
        return self._train(model, params, lambda m, x, t: F.mse_loss(m(x), t), (x, target), lr)

    def lstm_train(self, x, params, lr):
        """nn.LSTM (its fused ATen kernel in eager mode), loss mean(h_T^2)."""
        nn = self.torch.nn
        hidden4, inputs = params["lstm.weight_ih_l0"].shape

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(inputs, hidden4 // 4)

            def forward(self, x):
                return self.lstm(x)[1][0][-1]

        return self._train(Net(), params, lambda m, x: (m(x) ** 2).mean(), (x,), lr)

    def attention(self, q, k, v, dout):
        torch = self.torch
        F = torch.nn.functional
        f = self._fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        qkv = [self._t(a).requires_grad_() for a in (q, k, v)]
        td = self._t(dout)

        def call():
            out = f(*qkv)
            return (out.detach(), *torch.autograd.grad(out, qkv, td))

        return Runner(call, lambda out: [self._numpy(t) for t in out])


def _torch_models(torch):
    """The PyTorch modules of ``nets.py``'s networks (their state_dict names are nets')."""
    nn, F = torch.nn, torch.nn.functional

    class CNN(nn.Module):
        def __init__(self, c1, c2, flat, classes):
            super().__init__()
            self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
            self.fc = nn.Linear(flat, classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            return self.fc(x.flatten(1))

    class Block(nn.Module):
        def __init__(self, e, heads, hidden, t):
            super().__init__()
            self.ln1 = nn.LayerNorm(e)
            self.attn = nn.MultiheadAttention(e, heads, batch_first=True)
            self.ln2 = nn.LayerNorm(e)
            self.fc1 = nn.Linear(e, hidden)
            self.fc2 = nn.Linear(hidden, e)
            self.register_buffer("causal", torch.triu(torch.ones(t, t, dtype=torch.bool), 1),
                                 persistent=False)

        def forward(self, x):
            a = self.ln1(x)
            h = x + self.attn(a, a, a, attn_mask=self.causal, need_weights=False,
                              is_causal=True)[0]
            return h + self.fc2(F.gelu(self.fc1(self.ln2(h)), approximate="tanh"))

    return CNN, Block



# --- JAX ----------------------------------------------------------------------------------------


class JaxPeer(Peer):
    name = "jax.jit"

    def __init__(self, threads: int):
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as e:
            self.available, self.note = False, f"not installed ({e.name})"
            return
        self.jax, self.jnp = jax, jnp
        self.version = jax.__version__
        self.device = jax.devices("cpu")[0]

    def _put(self, a):
        return self.jax.device_put(a, self.device)

    def _simple(self, fn, *arrays):
        f = self.jax.jit(fn)
        xs = [self._put(a) for a in arrays]
        return Runner(lambda: f(*xs).block_until_ready(), lambda out: [np.asarray(out)])

    def gelu(self, x, a, b):
        jax = self.jax
        return self._simple(lambda x, a, b: jax.nn.gelu(x * a + b, approximate=True), x, a, b)

    def softmax(self, x):
        return self._simple(lambda x: self.jax.nn.softmax(x, axis=-1), x)

    def layernorm(self, x, g, b, eps):
        jnp = self.jnp

        def ln(x, g, b):
            mu = jnp.mean(x, axis=-1, keepdims=True)
            d = x - mu
            var = jnp.mean(d * d, axis=-1, keepdims=True)
            return d * self.jax.lax.rsqrt(var + eps) * g + b

        return self._simple(ln, x, g, b)

    def matmul(self, a, b):
        return self._simple(lambda a, b: a @ b, a, b)

    def mlp_step(self, x, y, params, lr):
        jax, jnp = self.jax, self.jnp

        def loss_fn(ps, x, y):
            h = x
            for k in range(0, len(ps) - 2, 2):
                h = jax.nn.relu(h @ ps[k] + ps[k + 1])
            logp = jax.nn.log_softmax(h @ ps[-2] + ps[-1], axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def step(ps, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(ps, x, y)
            return [p - lr * g for p, g in zip(ps, grads)], loss

        f = jax.jit(step, donate_argnums=(0,))
        state = [[self._put(p.copy()) for p in params]]
        tx, ty = self._put(x), self._put(y.astype(np.int32))

        def call():
            state[0], loss = f(state[0], tx, ty)
            return jax.block_until_ready(loss), jax.block_until_ready(state[0])

        return Runner(call, lambda out: [np.array(out[0]), *(np.array(p) for p in out[1])])

    def _train(self, loss_fn, params, args, lr):
        """One functional SGD step of ``loss_fn(params, *args)`` (a dict of parameters),
        jitted with the parameters donated."""
        jax = self.jax

        def step(ps, *args):
            loss, grads = jax.value_and_grad(loss_fn)(ps, *args)
            return {k: ps[k] - lr * grads[k] for k in ps}, loss

        f = jax.jit(step, donate_argnums=(0,))
        state = [{k: self._put(v.copy()) for k, v in params.items()}]
        jargs = [self._put(a) for a in args]

        def call():
            state[0], loss = f(state[0], *jargs)
            return jax.block_until_ready(loss), jax.block_until_ready(state[0])

        return Runner(call, lambda out: [np.array(out[0]), *(np.array(out[1][k])
                                                             for k in params)])

    def cnn_train(self, x, y, params, lr):
        jax, jnp, lax = self.jax, self.jnp, self.jax.lax

        def conv(h, w, b):
            return lax.conv_general_dilated(h, w, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NCHW", "OIHW", "NCHW")) \
                + b[None, :, None, None]

        def pool(h):
            return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

        def loss_fn(p, x, y):
            h = pool(jax.nn.relu(conv(x, p["conv1.weight"], p["conv1.bias"])))
            h = pool(jax.nn.relu(conv(h, p["conv2.weight"], p["conv2.bias"])))
            logits = h.reshape(h.shape[0], -1) @ p["fc.weight"].T + p["fc.bias"]
            logp = jax.nn.log_softmax(logits, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        return self._train(loss_fn, params, (x, y.astype(np.int32)), lr)

    def transformer_train(self, x, target, params, heads, lr):
        jax, jnp = self.jax, self.jnp

        def ln(z, g, b):
            mu = jnp.mean(z, axis=-1, keepdims=True)
            d = z - mu
            return d * jax.lax.rsqrt(jnp.mean(d * d, axis=-1, keepdims=True) + nets.EPS) * g + b

        def block(p, x):
            n, t, e = x.shape
            a = ln(x, p["ln1.weight"], p["ln1.bias"])
            qkv = a @ p["attn.in_proj_weight"].T + p["attn.in_proj_bias"]
            q, k, v = (qkv[..., i * e:(i + 1) * e].reshape(n, t, heads, e // heads)
                       for i in range(3))  # [B, T, heads, D]: dot_product_attention's layout
            o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(n, t, e)
            h = x + o @ p["attn.out_proj.weight"].T + p["attn.out_proj.bias"]
            c = ln(h, p["ln2.weight"], p["ln2.bias"])
            u = jax.nn.gelu(c @ p["fc1.weight"].T + p["fc1.bias"], approximate=True)
            return h + u @ p["fc2.weight"].T + p["fc2.bias"]

        def loss_fn(p, x, target):
            return jnp.mean((block(p, x) - target) ** 2)

        return self._train(loss_fn, params, (x, target), lr)

    def lstm_train(self, x, params, lr):
        """The LSTM cell under lax.scan (the input projection of all steps first)."""
        jax, jnp = self.jax, self.jnp

        def loss_fn(p, x):
            w_hh = p["lstm.weight_hh_l0"]
            H = w_hh.shape[1]
            xw = x @ p["lstm.weight_ih_l0"].T + p["lstm.bias_ih_l0"] + p["lstm.bias_hh_l0"]

            def cell(carry, g_x):
                h, c = carry
                g = g_x + h @ w_hh.T
                i, f = jax.nn.sigmoid(g[:, :H]), jax.nn.sigmoid(g[:, H:2 * H])
                gg, o = jnp.tanh(g[:, 2 * H:3 * H]), jax.nn.sigmoid(g[:, 3 * H:])
                c = f * c + i * gg
                return (o * jnp.tanh(c), c), None

            zeros = jnp.zeros((x.shape[1], H), x.dtype)
            (h, _), _ = jax.lax.scan(cell, (zeros, zeros), xw)
            return jnp.mean(h * h)

        return self._train(loss_fn, params, (x,), lr)

    def attention(self, q, k, v, dout):
        """``jax.nn.dot_product_attention`` takes [B, T, heads, D]: the inputs are transposed
        to it before timing and the results back after."""
        jax = self.jax

        def fwd_bwd(q, k, v, dout):
            out, vjp = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, is_causal=True), q, k, v)
            return (out, *vjp(dout))

        f = jax.jit(fwd_bwd)
        args = [self._put(np.ascontiguousarray(a.transpose(0, 2, 1, 3)))
                for a in (q, k, v, dout)]
        return Runner(lambda: jax.block_until_ready(f(*args)),
                      lambda out: [np.asarray(o).transpose(0, 2, 1, 3) for o in out])


# --- registry -----------------------------------------------------------------------------------

ALL = ("numpy", "torch", "torch.compile", "torch.compile[max-autotune-no-cudagraphs]", "jax.jit")


def make(name: str, threads: int) -> Peer:
    """The peer called ``name`` (one of ``ALL``); it may report ``available = False``."""
    if name == "numpy":
        return NumpyPeer(threads)
    if name == "torch":
        return TorchPeer(threads)
    if name == "torch.compile":
        return TorchPeer(threads, "default")
    if name.startswith("torch.compile[") and name.endswith("]"):
        return TorchPeer(threads, name[len("torch.compile["):-1])
    if name == "jax.jit":
        return JaxPeer(threads)
    raise ValueError(f"unknown peer {name!r}; known: {', '.join(ALL)}")
