"""``nn.Module``: a container of Parameters, Buffers and sub-modules with named state.

State names are attribute paths (``fc1.w``, ``layers.0.b``, ``bn.running_mean``), given when a
parameter, buffer or sub-module is assigned to a module attribute, so the IR, ``state_dict()``
and artifacts all use the same names. A subclass does not need to call ``super().__init__()``.

``training`` (set by ``train()``/``eval()``) is read while tracing, e.g. by ``Dropout``: a traced
function records which modules' modes it read, and a compiled function compiles (or reuses) the
variant for the modes those modules have at each call.

``load_state_dict`` also takes PyTorch's names and layouts (see ``torch_names.py``).
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple

from lamina.frontend.nn import torch_names
from lamina.frontend.parameter import Buffer, Parameter, StateTensor
from lamina.frontend.trace import mode_changed, note_mode, user_loc
from lamina.ir.builder import Var
from lamina.ir.errors import LaminaError, TraceError
from lamina.ir.variable import Variable

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _children(value, prefix: str):
    """(path, item) for Parameters, Buffers and Modules directly inside an attribute value."""
    if isinstance(value, (StateTensor, Module)):
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
    >>> print(MLP())
    MLP(
      (fc1): Linear(in_features=4, out_features=8, bias=True)
      (fc2): Linear(in_features=8, out_features=2, bias=True)
    )
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
            old = self.__dict__.get(name)
            if isinstance(old, StateTensor) and value is not None \
                    and not isinstance(value, (StateTensor, Module)):
                kind = type(old).__name__
                err = TraceError if isinstance(value, Var) else LaminaError
                raise err(f"{type(self).__name__}.{name} is a {kind} ({old.name}: {old.type}): "
                          f"give it a new value with .{name}.assign(value), inside a compiled "
                          "step or outside one (attribute assignment would replace the "
                          f"{kind.lower()} by a plain value)", user_loc())
            for path, item in _children(value, name):
                _adopt(item, path)
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        forward = getattr(type(self), "forward", None)
        if forward is None:
            raise LaminaError(f"{type(self).__name__} defines neither __call__ nor forward")
        return forward(self, *args, **kwargs)

    # --- registering state -------------------------------------------------------------------

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Add a Buffer (state that is not trained) as attribute ``name``; ``tensor`` is an
        array, a ``Buffer`` or None. Non-persistent buffers stay out of ``state_dict()``."""
        if tensor is not None:
            if not isinstance(tensor, Buffer):
                tensor = Buffer(tensor, persistent, name=name)
            tensor.persistent = bool(persistent)
        self.__dict__.pop(name, None)  # registering replaces, as in PyTorch
        setattr(self, name, tensor)

    def register_parameter(self, name: str, param) -> None:
        """Add ``param`` (a Parameter or None) as attribute ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise LaminaError(f"register_parameter: {name!r} must be a Parameter or None, got "
                              f"{type(param).__name__}")
        self.__dict__.pop(name, None)
        setattr(self, name, param)

    # --- traversal ---------------------------------------------------------------------------

    def _members(self):
        """(local name, attribute value) of what this module holds; containers override it."""
        return ((n, v) for n, v in vars(self).items() if not n.startswith("_"))

    def _walk(self, prefix: str):
        for name, value in self._members():
            for path, item in _children(value, f"{prefix}{name}"):
                yield path, item
                if isinstance(item, Module):
                    yield from item._walk(path + ".")

    def _named_state(self, kind, prefix: str = ""):
        """(path, item) of each ``kind`` item once, in attribute order; at the root, an item
        that no assignment named yet (a layer appended to a list after the list was
        assigned) takes its path here, so the IR and state_dict() agree on its name."""
        seen: set[int] = set()
        for path, item in self._walk(prefix):
            if not prefix and isinstance(item, Module):
                _adopt(item, path)  # no-op for modules an assignment already named
            if isinstance(item, kind) and id(item) not in seen:
                seen.add(id(item))
                if not item._named_by_owner and not prefix:
                    _adopt(item, path)
                yield path, item

    def named_parameters(self, prefix: str = ""):
        """(path, Parameter) pairs, each parameter once, in attribute order."""
        return self._named_state(Parameter, prefix)

    def parameters(self) -> list[Parameter]:
        """The trainable tensors (what an optimizer takes); buffers are not among them."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        """(path, Buffer) pairs, each buffer once, in attribute order."""
        return self._named_state(Buffer, prefix)

    def buffers(self) -> list[Buffer]:
        return [b for _, b in self.named_buffers()]

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        seen = {id(self)}
        for path, m in self._walk(prefix):
            if isinstance(m, Module) and id(m) not in seen:
                seen.add(id(m))
                yield path, m

    def modules(self):
        return [m for _, m in self.named_modules()]

    def named_children(self):
        """(path, Module) of the modules this one holds directly (``fc1``, ``layers.0``)."""
        seen: set[int] = set()
        for name, value in self._members():
            for path, item in _children(value, name):
                if isinstance(item, Module) and id(item) not in seen:
                    seen.add(id(item))
                    yield path, item

    def children(self):
        return [m for _, m in self.named_children()]

    def apply(self, fn):
        """Call ``fn`` on every sub-module, then on this one (PyTorch's order); returns self.
        ``model.apply(init_weights)`` with ``nn.init`` re-initializes a model."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> OrderedDict:
        """State name -> a copy of its current value (numpy): parameters and persistent
        buffers, in attribute order."""
        out = OrderedDict()
        for k, v in self._named_state(StateTensor):
            if isinstance(v, Parameter) or v.persistent:
                out[k] = v.numpy()
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values into the parameters and buffers in place; compiled functions see them
        at once. Returns the (missing, unexpected) keys, as PyTorch does.

        Keys are lamina's names (``fc1.w``) or PyTorch's for the same architecture
        (``fc1.weight``, ``0.weight`` in a Sequential, ``bn.num_batches_tracked``), with
        PyTorch's layouts: a Linear's ``weight`` [out, in] is stored transposed into ``w``
        [in, out]. Values are numpy arrays (or anything ``np.asarray`` takes: a PyTorch
        ``state_dict()``'s tensors). With ``strict`` (the default) a missing or unexpected key
        is an error; a shape that does not fit always is, and nothing is written then.

        >>> import numpy as np
        >>> from lamina import nn
        >>> layer = nn.Linear(3, 2)
        >>> _ = layer.load_state_dict({"weight": np.arange(6.0).reshape(2, 3),
        ...                            "bias": np.zeros(2)})
        >>> layer.w.numpy()
        array([[0., 3.],
               [1., 4.],
               [2., 5.]], dtype=float32)
        """
        entries = [(path, item) for path, item in self._named_state(StateTensor)
                   if isinstance(item, Parameter) or item.persistent]
        plan, missing, unexpected = torch_names.match(self, entries, state)
        if strict and (missing or unexpected):
            raise LaminaError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for item, value in plan:
            Variable.assign(item, value)  # the host write, also if called inside a trace
        return IncompatibleKeys(missing, unexpected)

    def _torch_key(self, local: str):
        """PyTorch's name for the state or child at ``local`` (a path inside this module) and
        the permutation of axes from lamina's layout to PyTorch's (None: the same)."""
        return local, None

    def train(self, mode: bool = True):
        """Set training mode (read when a function is traced: dropout, batch norm, ...)."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    # --- printing ----------------------------------------------------------------------------

    def extra_repr(self) -> str:
        """The arguments shown inside ``Name(...)`` by ``print(model)`` (PyTorch's hook)."""
        return ""

    def _repr_children(self):
        """(shown name, object) of the children ``print(model)`` lists."""
        for path, m in self.named_children():
            yield self._torch_key(path)[0], m

    def __repr__(self) -> str:
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        children = [f"({name}): " + repr(m).replace("\n", "\n  ")
                    for name, m in self._repr_children()]
        if not children and len(lines) <= 1:
            return f"{type(self).__name__}({extra})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines + children) + "\n)"


def _adopt(item, path: str) -> None:
    """Name ``item`` (and, for a module, its state) after its path in the new owner.

    A module renames its state only the first time it is attached, so a module shared by two
    owners keeps the names from the first.
    """
    if isinstance(item, StateTensor):
        if not item._named_by_owner:
            item.name = path
            item._named_by_owner = True
        return
    if getattr(item, "_adopted", False):
        return
    object.__setattr__(item, "_adopted", True)
    for sub, p in item._named_state(StateTensor):
        p.name = f"{path}.{sub}"
        p._named_by_owner = True
    # Where each module now sits, so that a container can name what is appended to it later.
    object.__setattr__(item, "_path", path)
    for sub, m in item.named_modules():
        if sub:
            object.__setattr__(m, "_path", f"{path}.{sub}")


def adopt_member(container, item, local: str) -> None:
    """Name ``item``, just put into ``container`` at ``local``, after its path there: at once if
    the container's own path is known, else when its root is first walked."""
    if isinstance(item, (StateTensor, Module)):
        path = getattr(container, "_path", None)
        if path is not None:
            _adopt(item, f"{path}.{local}")
        elif not getattr(container, "_adopted", False):
            _adopt(item, local)
