"""Checking a lamina layer against PyTorch's (a test-only oracle), for the layer tests: load the
torch module's ``state_dict`` into the lamina one by name, run both on the same input, compare
the outputs and the gradients of ``sum(out * r)`` (random ``r``) with respect to the input and
every parameter (in PyTorch's layout), in training or eval mode.

    check_against_torch(nn.LayerNorm(8), torch.nn.LayerNorm(8), x, backend)
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina import nn
from lamina.frontend.nn import torch_names
from lamina.frontend.trace import current

torch = pytest.importorskip("torch")

F32 = np.float32


def torch_sd(tm) -> dict:
    return {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}


def param_keys(model):
    """(Parameter, PyTorch name, permutation from lamina's layout) for each parameter."""
    seen, out = set(), []
    for _, torch_path, perm, item in torch_names.walk(model):
        if isinstance(item, nn.Parameter) and id(item) not in seen:
            seen.add(id(item))
            out.append((item, torch_path, perm))
    return out


def _lamina_run(model, backend, x, r, grad_x=True):
    """Output, input gradient and parameter gradients of ``sum(model(x) * r)``, one compiled
    call (gradients through the ``grad`` op, as ``Optimizer.minimize`` takes them)."""
    params = [p for p, _, _ in param_keys(model)]

    def f(x, r):
        b = current().builder
        out = model(x)
        loss = b.var(b.lift((out * r).sum()))
        gx = b.call("grad", loss, x) if grad_x else None
        return out, gx, [b.call("grad", loss, current().read(p)) for p in params]

    return lm.compile(f, backend=backend)(x, r)


def _torch_run(tm, x, r, grad_x=True):
    tx = torch.tensor(x, requires_grad=grad_x and x.dtype.kind == "f")
    tm.zero_grad()
    out = tm(tx)
    (out * torch.tensor(r)).sum().backward()
    grads = {k: p.grad.numpy() for k, p in tm.named_parameters()}
    return out.detach().numpy(), (tx.grad.numpy() if grad_x else None), grads


def check_against_torch(model, tm, x, backend, train=True, grad_x=True, seed=0):
    """Load ``tm``'s state dict into ``model``; compare outputs and gradients in the mode
    ``train`` (each model runs once: buffers such as BatchNorm's running statistics are then
    one step on, to compare by the caller)."""
    model.load_state_dict(torch_sd(tm))
    model.train(train)
    tm.train(train)
    with torch.no_grad():
        shape = copy.deepcopy(tm)(torch.tensor(x)).shape  # a copy: its buffers may change
    r = np.random.default_rng(seed + 1).standard_normal(tuple(shape)).astype(F32)
    out, gx, gps = _lamina_run(model, backend, x, r, grad_x)
    want_out, want_gx, want_g = _torch_run(tm, x, r, grad_x)
    assert out.shape == want_out.shape and out.dtype == want_out.dtype
    assert_close(out, want_out, atol=2e-6 * max(1.0, np.abs(want_out).max()))
    if grad_x:
        assert_close(gx, want_gx, atol=2e-6 * max(1.0, np.abs(want_gx).max()))
    for (p, key, perm), g in zip(param_keys(model), gps):
        want = want_g[key]
        got = g if perm is None else np.transpose(g, perm)
        assert_close(got, want, atol=2e-6 * max(1.0, np.abs(want).max()), err_msg=key)
    return model


def randn(shape, seed=0, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(F32)
