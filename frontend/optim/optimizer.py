"""The optimizer base: ``opt.minimize(loss)`` records gradients and updates into the trace.

Slots (momentum, Adam moments, the step count) and the learning rate are Variables: state of
the compiled graph, updated in place. Setting ``opt.lr`` changes the next step without
recompiling.
"""

from __future__ import annotations

import numpy as np

from lamina.frontend.nn import utils as nn_utils
from lamina.frontend.parameter import Buffer, Parameter
from lamina.frontend.trace import require_trace, user_loc
from lamina.ir.errors import GradError, LaminaError
from lamina.ir.variable import Variable


class _Group(dict):
    """One parameter group (PyTorch's ``param_groups[i]``): writing its ``"lr"`` sets the
    rate of the compiled step (no recompilation); other options are read when the step is
    traced."""

    def __init__(self, opt, index: int, items: dict):
        super().__init__(items)
        self._opt, self._index = opt, index

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if key == "lr" and self._opt is not None:
            self._opt._lrs[self._index].assign(np.float32(value))


class Optimizer:
    """Base class: subclasses implement :meth:`update`.

    ``params`` is an iterable of parameters, or of dicts (PyTorch's parameter groups), each
    with ``"params"`` and any options to override for them, e.g. no weight decay on norms
    and biases::

        >>> import numpy as np
        >>> from lamina import nn, optim
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> decay = [p for n, p in model.named_parameters() if n.endswith(".w")]
        >>> rest = [p for n, p in model.named_parameters() if not n.endswith(".w")]
        >>> opt = optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}],
        ...                   lr=1e-3, weight_decay=0.1)
        >>> [(len(g["params"]), g["weight_decay"]) for g in opt.param_groups]
        [(1, 0.1), (3, 0.0)]

    Each group's ``"lr"`` is state of the compiled step (set it, or let a schedule set it);
    the other options are read when the step is traced.
    """

    kind = "opt"

    def __init__(self, params, lr: float, **defaults):
        items = list(params)
        if items and all(isinstance(g, dict) for g in items):
            raw = items
        elif any(isinstance(g, dict) for g in items):
            raise LaminaError(f"{type(self).__name__}: give parameters or parameter groups "
                              "(dicts with 'params'), not a mix")
        else:
            raw = [{"params": items}]
        self.defaults = {"lr": lr, **defaults}
        self.param_groups: list[_Group] = []
        seen: dict[int, int] = {}
        for i, g in enumerate(raw):
            if "params" not in g:
                raise LaminaError(f"{type(self).__name__}: parameter group {i} has no "
                                  "'params'")
            unknown = set(g) - set(self.defaults) - {"params", "initial_lr"}
            if unknown:
                raise LaminaError(f"{type(self).__name__}: parameter group {i} sets "
                                  f"{sorted(unknown)}; the options are {sorted(self.defaults)}")
            ps = [g["params"]] if isinstance(g["params"], Parameter) else list(g["params"])
            for p in ps:
                self._check_param(p)
                if id(p) in seen:
                    raise LaminaError(f"{type(self).__name__}: {p.name} is in parameter groups "
                                      f"{seen[id(p)]} and {i}; a parameter belongs to one")
                seen[id(p)] = i
            self.param_groups.append(_Group(None, i, {**self.defaults, **g, "params": ps}))
        self.params = [p for g in self.param_groups for p in g["params"]]
        if not self.params:
            raise LaminaError(f"{type(self).__name__}: no parameters to optimize")
        self._group_of = seen
        self._lrs = [Variable(np.float32(g["lr"]), name=f"{self.kind}.lr" + (f"{i}" if i else ""))
                     for i, g in enumerate(self.param_groups)]
        for g in self.param_groups:
            g._opt = self
        self._slots: dict[tuple[int, str], Variable] = {}
        self._grad_norm: Variable | None = None

    def _check_param(self, p) -> None:
        if isinstance(p, Buffer):
            raise LaminaError(f"{type(self).__name__}: {p.name} is a Buffer (state that "
                              "is not trained); pass model.parameters(), which has none")
        if not isinstance(p, Parameter):
            raise LaminaError(f"{type(self).__name__}: expected Parameters, got "
                              f"{type(p).__name__}")
        if not p.dtype.is_float:
            raise GradError(f"{type(self).__name__}: parameter {p.name} is {p.type}; only "
                            "float parameters can be trained")

    @property
    def _lr(self) -> Variable:
        return self._lrs[0]

    def group(self, p: Parameter) -> dict:
        """The options of ``p``'s parameter group."""
        return self.param_groups[self._group_of[id(p)]]

    @property
    def lr(self) -> float:
        """The learning rate (of the first parameter group; setting it sets every group's):
        state of the compiled step, so setting it (by hand or from a schedule,
        ``optim.lr_scheduler``) never recompiles. Reads back the value set; the step computes
        with it rounded to float32."""
        g = self.param_groups[0]
        if np.float32(g["lr"]) != self._lrs[0].host_value():  # written another way
            dict.__setitem__(g, "lr", float(self._lrs[0].host_value()))
        return g["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.param_groups:
            g["lr"] = float(value)

    def slot(self, p: Parameter, kind: str, init: float = 0.0) -> Variable:
        """Per-parameter optimizer state (created zero-filled on first use)."""
        key = (id(p), kind)
        if key not in self._slots:
            self._slots[key] = Variable(np.full(p.shape, init, p.dtype.np), f"{p.name}.{kind}")
        return self._slots[key]

    def scalar(self, kind: str, init: float = 0.0) -> Variable:
        """Optimizer-wide scalar state (the step count)."""
        key = (0, kind)
        if key not in self._slots:
            self._slots[key] = Variable(np.float32(init), f"{self.kind}.{kind}")
        return self._slots[key]

    def minimize(self, loss, *, clip_grad_norm: float | None = None,
                 clip_grad_value: float | None = None):
        """Differentiate ``loss`` with respect to every parameter and record the update.

        Call it inside a compiled function; the whole step (forward, backward, update) is one
        graph. Returns ``loss``.

        ``clip_grad_value`` clamps each gradient element to ``[-v, v]``; ``clip_grad_norm``
        then scales all gradients together so that their global 2-norm is at most that
        (PyTorch's ``clip_grad_value_`` / ``clip_grad_norm_``, inside the step). The norm
        before clipping is kept: :attr:`grad_norm` after the step.

        >>> import numpy as np, lamina as lm
        >>> from lamina import nn, optim
        >>> w = nn.Parameter(np.array([3.0, 4.0], np.float32), "w")
        >>> opt = optim.SGD([w], lr=1.0)
        >>> step = lm.compile(lambda: opt.minimize((w * w).sum() / 2, clip_grad_norm=1.0))
        >>> _ = step(); np.round(w.numpy(), 4), opt.grad_norm  # gradient w (norm 5) -> norm 1
        (array([2.4, 3.2], dtype=float32), 5.0)
        """
        ctx = require_trace(f"{type(self).__name__}.minimize")
        b = ctx.builder
        loss_v = b.var(b.lift(loss))
        if loss_v.shape != () or not loss_v.dtype.is_float:
            raise GradError(f"minimize needs a scalar float loss, got {loss_v.type}; reduce it "
                            "first (e.g. .mean())", user_loc())
        me = f"{type(self).__name__}.minimize"
        for p in self.params:
            if id(p) in ctx.assigned:
                raise GradError(f"{p.name} is assigned in this step ({ctx.writers[p.name]}) "
                                f"and updated by {me}: a state has one writer per step",
                                user_loc())
        params = [ctx.read(p) for p in self.params]
        grads = [b.call("grad", loss_v, p) for p in params]
        if clip_grad_value is not None:
            grads = nn_utils.clip_grad_value(grads, clip_grad_value)
        if clip_grad_norm is not None:
            grads, norm = nn_utils.clip_grad_norm(grads, clip_grad_norm)
            if self._grad_norm is None:
                self._grad_norm = Variable(np.float32(0), name=f"{self.kind}.grad_norm")
            ctx.assign(self._grad_norm, norm, by=me)
        lrs = [ctx.read(v) for v in self._lrs]
        for p, value, g in zip(self.params, params, grads):
            lr = lrs[self._group_of[id(p)]]
            ctx.assign(p, self.update(ctx, p, value, g, lr.astype(p.dtype)), by=me)
        self.finish(ctx)
        return loss

    @property
    def grad_norm(self) -> float | None:
        """The global gradient norm (before clipping) of the last step that clipped by norm
        (``minimize(..., clip_grad_norm=...)``); None before."""
        return None if self._grad_norm is None else float(self._grad_norm.host_value())

    def update(self, ctx, p: Parameter, value, grad, lr):
        """The new value of parameter ``p`` (traced) from its ``grad``."""
        raise NotImplementedError

    def finish(self, ctx) -> None:
        """Optimizer-wide updates after all parameters (e.g. the step count)."""

    def state_dict(self) -> dict:
        """Slot name -> value (copies), including the learning rate."""
        out = {v.name: v.numpy() for v in self._lrs}
        out.update({v.name: v.numpy() for v in self._slots.values()})
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` gave (slots are created where a fresh optimizer has
        none yet, so a new process resumes before its first step). Everything is checked
        before anything is written: an unknown name, a missing slot or a wrong shape is an
        error naming it."""
        self._apply(self._plan(state))

    def _plan(self, state: dict) -> list:
        """The checked writes of :meth:`load_state_dict` (nothing written yet)."""
        plan = []
        by_name = {p.name: p for p in self.params}
        for key, value in state.items():
            value = np.asarray(value)
            lr_names = [v.name for v in self._lrs]
            if key in lr_names:
                plan.append((lr_names.index(key), "lr", value))
                continue
            if key.startswith(self.kind + ".") and "." not in key[len(self.kind) + 1:]:
                plan.append((None, key[len(self.kind) + 1:], value))
                continue
            owner = max((n for n in by_name if key.startswith(n + ".")), key=len, default=None)
            if owner is None:
                raise LaminaError(f"{type(self).__name__}.load_state_dict: {key!r} is no "
                                  f"state of this optimizer (its parameters: "
                                  f"{sorted(by_name)})")
            p = by_name[owner]
            if value.shape != p.shape:
                raise LaminaError(f"{type(self).__name__}.load_state_dict: {key} has shape "
                                  f"{list(value.shape)}, the parameter {list(p.shape)}")
            plan.append((p, key[len(owner) + 1:], value))
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise LaminaError(f"{type(self).__name__}.load_state_dict: missing {sorted(missing)}")
        return plan

    def _apply(self, plan: list) -> None:
        for p, kind, value in plan:
            if kind == "lr":
                self.param_groups[p]["lr"] = float(value)
            elif p is None:
                self.scalar(kind).assign(value.astype(np.float32))
            else:
                self.slot(p, kind).assign(value.astype(p.dtype.np))
