"""Checkpoints: a model, its optimizer and whatever else a training run carries, in one file.

``lm.save_checkpoint(path, model, optimizer, step=...)`` writes an ``.npz`` (numpy's zip of
arrays): the model's parameters and buffers, the optimizer's slots and rate, lamina's random
key, and the state of any other object passed by keyword (a schedule, a ``DataLoader``, an
``EMA``). Arrays are stored as arrays, everything else as JSON; nothing is pickled, and the
file is written to a temporary name and renamed, so a crash never leaves half a checkpoint.
``lm.load_checkpoint`` restores all of it in place, so a resumed run continues exactly (bit for
bit) as the uninterrupted one would have.

>>> import os, tempfile, numpy as np, lamina as lm
>>> from lamina import nn, optim
>>> model = nn.Linear(3, 2)
>>> opt = optim.Adam(model.parameters(), lr=0.01)
>>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
>>> lm.save_checkpoint(path, model, opt, step=7)
>>> lm.load_checkpoint(path, nn.Linear(4, 2))
Traceback (most recent call last):
...
lamina.ir.errors.LaminaError: load_checkpoint: ... holds another model (differs at ['w'])
>>> info = lm.load_checkpoint(path, model, opt)
>>> info["step"]
7
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from lamina.ir.errors import LaminaError

FORMAT = "lamina-checkpoint"
VERSION = 1
_META = "__meta__.json"


def _split(prefix: str, state: dict, arrays: dict, where: str) -> dict:
    """Arrays of ``state`` into ``arrays`` under ``prefix/``; the rest returned (JSON)."""
    rest = {}
    for k, v in state.items():
        if isinstance(v, (np.ndarray, np.generic)):
            arrays[f"{prefix}/{k}"] = np.asarray(v)
        else:
            try:
                json.dumps(v)
            except TypeError:
                raise LaminaError(f"save_checkpoint: {where} state {k!r} is a "
                                  f"{type(v).__name__}, neither an array nor plain data "
                                  "(numbers, strings, lists, dicts)") from None
            rest[k] = v
    return rest


def save_checkpoint(path: str, model, optimizer=None, *, step: int | None = None,
                    extra: dict | None = None, **stateful) -> None:
    """Write ``model`` (its ``state_dict()``), ``optimizer`` and each of ``stateful`` (objects
    with ``state_dict()``/``load_state_dict()``: ``scheduler=``, ``loader=``, ``ema=``...) to
    ``path`` with the training ``step``, lamina's random key and ``extra`` (plain data: a
    config, a metric). Atomic: the file appears whole or not at all."""
    from lamina.frontend import random

    arrays: dict[str, np.ndarray] = {}
    meta = {"format": FORMAT, "version": VERSION, "step": step, "extra": extra or {},
            "json": {}}
    _split("model", model.state_dict(), arrays, "the model's")
    if optimizer is not None:
        meta["json"]["optimizer"] = _split("optimizer", optimizer.state_dict(), arrays,
                                           "the optimizer's")
    for name, obj in stateful.items():
        if not hasattr(obj, "state_dict"):
            raise LaminaError(f"save_checkpoint: {name}= has no state_dict() "
                              f"({type(obj).__name__})")
        meta["json"][name] = _split(name, obj.state_dict(), arrays, f"{name}'s")
    arrays["rng/key"] = random._KEY.numpy()
    try:
        json.dumps(meta)
    except TypeError as e:
        raise LaminaError(f"save_checkpoint: extra must be plain data: {e}") from None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(_META, json.dumps(meta))
        for k, v in arrays.items():
            with z.open(k + ".npy", "w") as f:
                np.lib.format.write_array(f, np.array(v, order="C"), allow_pickle=False)
    from lamina.passes.manager import write_atomic

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise LaminaError(f"save_checkpoint: the folder {folder} does not exist")
    write_atomic(path, buf.getvalue())


def _read(path: str) -> tuple[dict, dict]:
    if not os.path.exists(path):
        raise LaminaError(f"load_checkpoint: no file {path}")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if _META not in names:
                raise LaminaError(f"load_checkpoint: {path} is not a lamina checkpoint (no "
                                  f"{_META})")
            meta = json.loads(z.read(_META))
            arrays = {}
            for n in names:
                if n == _META:
                    continue
                if not n.endswith(".npy"):
                    raise LaminaError(f"load_checkpoint: unexpected member {n!r} in {path}")
                with z.open(n) as f:
                    arrays[n[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise LaminaError(f"load_checkpoint: {path} is damaged or not a checkpoint: {e}") \
            from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise LaminaError(f"load_checkpoint: {path} is {meta.get('format')!r} version "
                          f"{meta.get('version')}, not {FORMAT!r} version {VERSION}")
    return meta, arrays


def _part(name: str, meta: dict, arrays: dict) -> dict:
    state = {k[len(name) + 1:]: v for k, v in arrays.items() if k.startswith(name + "/")}
    state.update(meta["json"].get(name, {}))
    return state


def load_checkpoint(path: str, model, optimizer=None, **stateful) -> dict:
    """Restore what :func:`save_checkpoint` wrote into ``model``, ``optimizer`` and the
    ``stateful`` objects (the same keywords), and lamina's random key. Returns ``{"step": ...,
    "extra": ...}``. A checkpoint that does not fit (another architecture, a missing part)
    is an error naming the mismatch, raised before anything is changed."""
    from lamina.frontend import random

    meta, arrays = _read(path)
    model_state = _part("model", meta, arrays)
    ours = model.state_dict()
    if set(ours) != set(model_state) or any(
            np.shape(model_state[k]) != ours[k].shape for k in ours):
        diff = sorted(set(ours) ^ set(model_state)) or sorted(
            k for k in ours if np.shape(model_state[k]) != ours[k].shape)
        raise LaminaError(f"load_checkpoint: {path} holds another model (differs at {diff})")
    parts = {}
    for name, obj in [("optimizer", optimizer), *stateful.items()]:
        if obj is None:
            continue
        if name not in meta["json"]:
            raise LaminaError(f"load_checkpoint: {path} has no {name} state (saved: "
                              f"{sorted(meta['json'])})")
        parts[name] = (obj, _part(name, meta, arrays))
    opt_plan = None
    if optimizer is not None:  # checked before anything is written
        try:
            opt_plan = optimizer._plan(parts.pop("optimizer")[1])
        except LaminaError as e:
            raise LaminaError(f"load_checkpoint: {path}: {e}") from None
    model.load_state_dict(model_state)
    if opt_plan is not None:
        optimizer._apply(opt_plan)
    for obj, state in parts.values():
        obj.load_state_dict(state)
    random._KEY.assign(arrays["rng/key"])
    return {"step": meta["step"], "extra": meta["extra"]}


__all__ = ["load_checkpoint", "save_checkpoint"]
