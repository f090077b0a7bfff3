"""The on-disk compile cache of the backends: compiled code keyed by everything it depends on.

The key hashes the optimized IR text, the backend, lamina's and llvmlite's/LLVM's versions, the
code generator's version and the host CPU (name and features). A hit loads object code without
generating or optimizing any LLVM IR. A miss says why: the index keeps, per graph name, the key
parts of the last entry, so the message names the part that changed.

Files (written atomically): ``<dir>/<key>.o``, ``<dir>/<key>.json`` and ``<dir>/index.json``.
The directory is ``LAMINA_CACHE_DIR``, else ``~/.cache/lamina``; ``LAMINA_CACHE=0`` disables it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from lamina.ir import config
from lamina.ir.errors import ConfigError
from lamina.passes.manager import write_atomic


def cache_dir() -> str | None:
    if not config.cache_enabled():  # LAMINA_CACHE, checked (a ConfigError names it)
        return None
    named = config.cache_dir()  # LAMINA_CACHE_DIR
    d = named or os.path.join(os.path.expanduser("~"), ".cache", "lamina")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        if named:  # a folder asked for by name: say why it cannot be used
            raise ConfigError(f"LAMINA_CACHE_DIR={d!r}: cannot create the cache folder "
                              f"({e.strerror or e}); point it at a writable directory or "
                              "set LAMINA_CACHE=0") from None
        return None  # the default folder: no cache, silently
    return d


def key_parts(ir_text: str, kind: str, versions: dict[str, str], target: str) -> dict[str, str]:
    return {"ir": hashlib.sha256(ir_text.encode()).hexdigest()[:24], "kind": kind,
            **{k: str(v) for k, v in sorted(versions.items())},
            "target": hashlib.sha256(target.encode()).hexdigest()[:16]}


def key_of(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


_NAMES = {"ir": "the IR changed", "target": "the CPU (name or features) changed",
          "kind": "a different kind of object", "codegen": "the code generator changed",
          "lamina": "lamina's version changed", "llvmlite": "llvmlite's version changed",
          "llvm": "LLVM's version changed", "triton": "Triton's version changed",
          "gpu": "the GPU target changed"}


class Cache:
    def __init__(self, directory: str | None = None):
        self.dir = directory if directory is not None else cache_dir()
        self.last_miss = ""

    def _index(self) -> dict:
        try:
            with open(os.path.join(self.dir, "index.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def get(self, name: str, parts: dict[str, str]) -> bytes | None:
        """Object code for ``parts``, or None (``last_miss`` then says why)."""
        if self.dir is None:
            self.last_miss = "the cache is disabled"
            return None
        key = key_of(parts)
        try:
            with open(os.path.join(self.dir, key + ".o"), "rb") as f:
                data = f.read()
            with open(os.path.join(self.dir, key + ".json")) as f:
                meta = json.load(f)
            if meta.get("sha256") == hashlib.sha256(data).hexdigest():
                return data
            self.last_miss = "the cached object was damaged (checksum mismatch)"
        except (OSError, ValueError):
            previous = self._index().get(name)
            if previous is None:
                self.last_miss = f"nothing cached for @{name} yet"
            else:
                changed = [_NAMES.get(k, k) for k in parts if previous.get(k) != parts[k]]
                self.last_miss = "; ".join(changed) or "the entry was removed"
        if config.debug >= 1:
            print(f"lamina: cache miss for @{name}: {self.last_miss}", file=sys.stderr)
        return None

    def put(self, name: str, parts: dict[str, str], data: bytes) -> None:
        if self.dir is None:
            return
        key = key_of(parts)
        try:
            write_atomic(os.path.join(self.dir, key + ".o"), data)
            write_atomic(os.path.join(self.dir, key + ".json"),
                         json.dumps({"name": name, "parts": parts,
                                     "sha256": hashlib.sha256(data).hexdigest()}))
            index = self._index()
            index[name] = parts
            write_atomic(os.path.join(self.dir, "index.json"), json.dumps(index))
        except OSError as e:  # a read-only or full disk costs speed, not correctness
            if config.debug >= 1:
                print(f"lamina: could not write the compile cache: {e}", file=sys.stderr)
