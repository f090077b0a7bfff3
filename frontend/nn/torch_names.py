"""PyTorch's names and layouts for a module's state, so that ``load_state_dict`` takes the
``state_dict`` of the same architecture built in PyTorch.

Each module says how its own local names differ (``Module._torch_key``): a Linear's ``w``
[in, out] is PyTorch's ``weight`` [out, in], a Sequential's ``layers.0`` is PyTorch's ``0``.
Everything else (attribute names, list indices, BatchNorm's buffers) is the same on both sides.
"""

from __future__ import annotations

import numpy as np

from lamina.ir.errors import LaminaError


def walk(module, lm_prefix: str = "", torch_prefix: str = ""):
    """(lamina path, PyTorch path, permutation or None, item) for every state tensor and
    module under ``module``, in attribute order (as ``Module._walk``)."""
    from lamina.frontend.nn.module import Module, _children

    for name, value in module._members():
        for sub, item in _children(value, name):
            key, perm = module._torch_key(sub)
            lm_path, torch_path = lm_prefix + sub, torch_prefix + key
            yield lm_path, torch_path, perm, item
            if isinstance(item, Module):
                yield from walk(item, lm_path + ".", torch_path + ".")


def torch_shape(shape, perm) -> tuple[int, ...]:
    return tuple(shape) if perm is None else tuple(shape[i] for i in perm)


def match(module, entries, state: dict):
    """Pair the keys of ``state`` with ``entries`` ((lamina path, state tensor) pairs).

    Returns ``(plan, missing, unexpected)``: ``plan`` lists (state tensor, value in lamina's
    layout) for every key that matched, after checking every shape (a mismatch is an error
    before anything is written); ``missing`` names the entries no key gave, in the naming the
    caller used (PyTorch's if any key was PyTorch's own name).
    """
    torch_of = {}
    for lm_path, torch_path, perm, item in walk(module):
        torch_of.setdefault(id(item), (torch_path, perm))
    keys = {}  # a key state may use -> (entry index, permutation from lamina's layout)
    for i, (path, item) in enumerate(entries):
        keys[path] = (i, None)
        torch_path, perm = torch_of.get(id(item), (path, None))
        keys.setdefault(torch_path, (i, perm))
    given: dict[int, str] = {}
    plan, unexpected, torch_style = [], [], False
    for key, value in state.items():
        hit = keys.get(key)
        if hit is None:
            unexpected.append(key)
            continue
        i, perm = hit
        path, item = entries[i]
        if i in given:
            raise LaminaError(f"load_state_dict: {given[i]!r} and {key!r} both give {path}")
        given[i] = key
        torch_style |= key != path
        arr = np.asarray(value)
        if arr.shape != torch_shape(item.shape, perm):
            layout = "" if perm is None else \
                f" (PyTorch's layout of {path}: {item.type} transposed)"
            raise LaminaError(f"load_state_dict: {key} has shape {list(arr.shape)}, the model "
                              f"expects {list(torch_shape(item.shape, perm))}{layout}")
        if perm is not None:
            arr = np.transpose(arr, np.argsort(perm))
        plan.append((item, arr))
    missing = []
    for i, (path, item) in enumerate(entries):
        if i not in given:
            torch_path = torch_of.get(id(item), (path, None))[0]
            missing.append(torch_path if torch_style else path)
    return plan, missing, unexpected
