"""Containers: ``Sequential``, ``ModuleList`` and ``ModuleDict`` (PyTorch's names).

A ModuleList's or ModuleDict's children are named by index or key (``blocks.0.w``,
``heads.cls.w``), as in PyTorch. A Sequential keeps its layers in the list ``layers``
(``head.layers.0.w``, lamina's names since its first version); PyTorch's ``head.0.weight``
loads into it (``load_state_dict``) and ``print`` shows the layers as ``(0)``, ``(1)``, ...
"""

from __future__ import annotations

from lamina.frontend.nn.module import Module, adopt_member
from lamina.ir.errors import LaminaError


class Sequential(Module):
    """Applies modules (or functions) in order; indexable like a list.

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    >>> print(seq)
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
    )
    >>> seq[0].w.name, len(seq)
    ('layers.0.w', 2)
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], dict):
            raise LaminaError("Sequential: an OrderedDict of named layers is not supported; "
                              "pass the layers as arguments")
        self.layers = list(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(*self.layers[i])
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def append(self, layer) -> Sequential:
        self.layers.append(layer)
        adopt_member(self, layer, f"layers.{len(self.layers) - 1}")
        return self

    def _torch_key(self, local: str):
        if local.startswith("layers."):
            return local[len("layers."):], None
        return local, None

    def _repr_children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer if isinstance(layer, Module) else _Shown(layer)


class _Shown:
    """A function inside a Sequential, as ``print`` shows it."""

    def __init__(self, fn):
        self.fn = fn

    def __repr__(self) -> str:
        return f"Lambda({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"


def _check_module(container: str, item) -> Module:
    if not isinstance(item, Module):
        raise LaminaError(f"{container}: {type(item).__name__} is not a Module (wrap a "
                          "function in a Module, or use a plain list)")
    return item


class ModuleList(Module):
    """A list of modules whose state is named by index (``blocks.0.w``); it is not callable.

    >>> from lamina import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
    ...     def __call__(self, x):
    ...         for block in self.blocks:
    ...             x = block(x)
    ...         return x
    >>> list(Net().state_dict())
    ['blocks.0.w', 'blocks.0.b', 'blocks.1.w', 'blocks.1.b']
    """

    def __init__(self, modules=()):
        self._items: list[Module] = []
        self.extend(modules)

    def _members(self):
        return ((str(i), m) for i, m in enumerate(self._items))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ModuleList(self._items[i])
        return self._items[i]

    def __setitem__(self, i: int, module) -> None:
        i = range(len(self._items))[i]
        self._items[i] = _check_module("ModuleList", module)
        adopt_member(self, module, str(i))

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    def __iadd__(self, modules) -> ModuleList:
        return self.extend(modules)

    def append(self, module) -> ModuleList:
        self._items.append(_check_module("ModuleList", module))
        adopt_member(self, module, str(len(self._items) - 1))
        return self

    def extend(self, modules) -> ModuleList:
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module) -> None:
        """Insert before ``index``; the modules after it keep the names they had (as a state
        name is fixed once given), so insert before the model is first used."""
        self._items.insert(index, _check_module("ModuleList", module))
        adopt_member(self, module, str(range(len(self._items))[index]))


class ModuleDict(Module):
    """A dict of modules whose state is named by key (``heads.cls.w``); it is not callable.

    >>> from lamina import nn
    >>> heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "box": nn.Linear(4, 4)})
    >>> list(heads.keys()), list(heads.state_dict())[:2]
    (['cls', 'box'], ['cls.w', 'cls.b'])
    """

    def __init__(self, modules=None):
        self._items: dict[str, Module] = {}
        if modules is not None:
            self.update(modules)

    def _members(self):
        return iter(self._items.items())

    def __getitem__(self, key: str) -> Module:
        return self._items[key]

    def __setitem__(self, key: str, module) -> None:
        if not isinstance(key, str) or not key or "." in key:
            raise LaminaError(f"ModuleDict: keys are non-empty strings without '.', got "
                              f"{key!r}")
        self._items[key] = _check_module("ModuleDict", module)
        adopt_member(self, module, key)

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def keys(self):
        return self._items.keys()

    def values(self):
        return self._items.values()

    def items(self):
        return self._items.items()

    def update(self, modules) -> None:
        items = modules.items() if hasattr(modules, "items") else modules
        for k, m in items:
            self[k] = m

    def pop(self, key: str) -> Module:
        return self._items.pop(key)
