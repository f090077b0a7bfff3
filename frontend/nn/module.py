"""``nn.Module``: a container of Parameters and sub-modules with named state.

Parameter names are attribute paths (``fc1.w``, ``layers.0.b``), given when a parameter or a
sub-module is assigned to a module attribute, so the IR, ``state_dict()`` and artifacts all use
the same names. A subclass does not need to call ``super().__init__()``.

``training`` (set by ``train()``/``eval()``) is read while tracing, e.g. by ``Dropout``: a traced
function records which modules' modes it read, and a compiled function compiles (or reuses) the
variant for the modes those modules have at each call.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from lamina.frontend.parameter import Parameter
from lamina.frontend.trace import mode_changed, note_mode
from lamina.ir.errors import LaminaError


def _children(value, prefix: str):
    """(path, item) for Parameters and Modules directly inside an attribute value."""
    if isinstance(value, (Parameter, Module)):
        yield prefix, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _children(v, f"{prefix}.{i}")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _children(v, f"{prefix}.{k}")


class Module:
    """Base class of layers and models.

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> class MLP(nn.Module):
    ...     def __init__(self):
    ...         self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
    ...     def __call__(self, x):
    ...         return self.fc2(lm.relu(self.fc1(x)))
    >>> [name for name, _ in MLP().named_parameters()]
    ['fc1.w', 'fc1.b', 'fc2.w', 'fc2.b']
    """

    @property
    def training(self) -> bool:
        """True in training mode (the default), False after ``eval()``. Reading it inside a
        trace makes the mode part of what the compiled variant depends on."""
        mode = self.__dict__.get("_training", True)
        note_mode(self, mode)
        return mode

    @training.setter
    def training(self, mode: bool) -> None:
        mode = bool(mode)
        if self.__dict__.get("_training", True) != mode:
            self.__dict__["_training"] = mode
            mode_changed()  # only on a change: model.train() in every step costs nothing

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_"):
            for path, item in _children(value, name):
                _adopt(item, path)
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        forward = getattr(type(self), "forward", None)
        if forward is None:
            raise LaminaError(f"{type(self).__name__} defines neither __call__ nor forward")
        return forward(self, *args, **kwargs)

    # --- traversal ---------------------------------------------------------------------------

    def named_parameters(self, prefix: str = ""):
        """(path, Parameter) pairs, each parameter once, in attribute order.

        A parameter that no assignment named yet (a layer appended to a list after the list
        was assigned) takes its path here, so the IR and state_dict() agree on its name.
        """
        seen: set[int] = set()
        for path, item in self._walk(prefix):
            if not prefix and isinstance(item, Module):
                _adopt(item, path)  # no-op for modules an assignment already named
            if isinstance(item, Parameter) and id(item) not in seen:
                seen.add(id(item))
                if not item._named_by_owner and not prefix:
                    _adopt(item, path)
                yield path, item

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        seen = {id(self)}
        for path, m in self._walk(prefix):
            if isinstance(m, Module) and id(m) not in seen:
                seen.add(id(m))
                yield path, m

    def _walk(self, prefix: str):
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            for path, item in _children(value, f"{prefix}{name}"):
                yield path, item
                if isinstance(item, Module):
                    yield from item._walk(path + ".")

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> OrderedDict:
        """Parameter name -> a copy of its current value (numpy)."""
        return OrderedDict((k, p.numpy()) for k, p in self.named_parameters())

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy values into the parameters in place; compiled functions see them at once."""
        params = dict(self.named_parameters())
        if strict:
            missing = sorted(set(params) - set(state))
            unexpected = sorted(set(state) - set(params))
            if missing or unexpected:
                raise LaminaError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for k, v in state.items():
            if k not in params:
                continue
            v = np.asarray(v)
            p = params[k]
            if v.shape != p.shape:
                raise LaminaError(f"load_state_dict: {k} has shape {list(v.shape)}, the model "
                                  f"expects {p.type}")
            p.assign(v)

    def train(self, mode: bool = True):
        """Set training mode (read when a function is traced: dropout, ...)."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for name, value in vars(self).items():
            if isinstance(value, Module):
                inner = repr(value).replace("\n", "\n  ")
                lines.append(f"  ({name}): {inner}")
            elif isinstance(value, Parameter):
                lines.append(f"  ({name}): Parameter({value.type})")
        return "\n".join(lines) + ")" if len(lines) > 1 else f"{type(self).__name__}()"


def _adopt(item, path: str) -> None:
    """Name ``item`` (and, for a module, its parameters) after its path in the new owner.

    A module renames its parameters only the first time it is attached, so a module shared by
    two owners keeps the names from the first.
    """
    if isinstance(item, Parameter):
        if not item._named_by_owner:
            item.name = path
            item._named_by_owner = True
        return
    if getattr(item, "_adopted", False):
        return
    object.__setattr__(item, "_adopted", True)
    for sub, p in item.named_parameters():
        p.name = f"{path}.{sub}"
        p._named_by_owner = True
