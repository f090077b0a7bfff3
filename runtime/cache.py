"""The on-disk compile cache of the backends: compiled code keyed by everything it depends on.

The key hashes the optimized IR text, the backend, lamina's and llvmlite's/LLVM's versions, the
code generator's version and the host CPU (name and features). A hit loads object code without
generating or optimizing any LLVM IR. A miss says why: the index keeps, per graph name, the key
parts of the last entry, so the message names the part that changed.

Files (written atomically): ``<dir>/<key>.o``, ``<dir>/<key>.json`` and ``<dir>/index.json``.
The directory is ``LAMINA_CACHE_DIR``, else ``~/.cache/lamina``; ``LAMINA_CACHE=0`` disables it.

The cache is untrusted input, like an artifact: an entry whose checksum or whose content check
(``get(..., check=)`` or ``register_check(kind, ...)``: the backend's structural check of object
code) fails is a miss, said so under ``LAMINA_DEBUG``, and the caller rebuilds and overwrites
it. Temporary files that a
process killed mid-write left behind (``*.tmp<pid>``) are removed when a process first opens
the cache (``sweep_temp_files``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable

from lamina.ir import config
from lamina.ir.errors import ConfigError, LaminaError
from lamina.passes.manager import write_atomic

# A temporary file of ``write_atomic``: ``<name>.tmp<pid of the writer>``.
_TEMP = re.compile(r".+\.tmp(\d+)$")
# A temporary file is removed when its writer is gone, or when it is this old anyway (its pid
# may have been reused). A write takes milliseconds: a minute of grace keeps the files of
# writers this process cannot see (another machine sharing the folder) from being removed.
TEMP_GRACE_S = 60.0
TEMP_MAX_AGE_S = 15 * 60.0
_SWEPT: set[str] = set()  # folders swept by this process


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process (or a number no pid can be: not alive)
    return True


def sweep_temp_files(directory: str, now: float | None = None) -> list[str]:
    """Remove the temporary files that writers killed mid-write left in ``directory`` and the
    folders below it (two levels: the triton sources live in ``triton/src``): those whose
    writer is not alive (after a grace period) or that are older than ``TEMP_MAX_AGE_S``.
    Returns the paths removed."""
    now = time.time() if now is None else now
    removed = []
    stack = [(directory, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if depth < 2:
                        stack.append((e.path, depth + 1))
                    continue
                m = _TEMP.match(e.name)
                if m is None or not e.is_file(follow_symlinks=False):
                    continue
                age = now - e.stat(follow_symlinks=False).st_mtime
                if age > TEMP_MAX_AGE_S or (age > TEMP_GRACE_S and not _alive(int(m.group(1)))):
                    os.remove(e.path)
                    removed.append(e.path)
            except OSError:  # gone already, or not ours to remove: leave it
                continue
    if removed and config.debug >= 1:
        print(f"lamina: removed {len(removed)} temporary file(s) left in the compile cache by "
              "interrupted writes", file=sys.stderr)
    return removed


# Content checks by the "kind" of an entry (``key_parts``), registered by the backends that
# store them, so that every reader of a kind checks it (not only readers that pass ``check``).
_CHECKS: dict[str, Callable[[bytes], None]] = {}


def register_check(kind: str, check: Callable[[bytes], None]) -> None:
    """Check every entry of ``kind`` read from the cache with ``check`` (raising a LaminaError
    makes it a miss), unless ``get`` is given a check of its own."""
    _CHECKS[kind] = check


class Cache:
    def __init__(self, directory: str | None = None):
        self.dir = directory if directory is not None else cache_dir()
        self.last_miss = ""
        if self.dir is not None and self.dir not in _SWEPT:  # once per folder and process
            _SWEPT.add(self.dir)
            sweep_temp_files(self.dir)

    def _index(self) -> dict:
        try:
            with open(os.path.join(self.dir, "index.json"), "rb") as f:
                index = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):
            return {}
        return index if isinstance(index, dict) else {}

    def get(self, name: str, parts: dict[str, str],
            check: Callable[[bytes], None] | None = None) -> bytes | None:
        """Object code for ``parts``, or None (``last_miss`` then says why).

        ``check(data)`` raising a LaminaError makes a damaged entry a miss (the caller rebuilds
        it and ``put`` overwrites it)."""
        if self.dir is None:
            self.last_miss = "the cache is disabled"
            return None
        key = key_of(parts)
        check = check or _CHECKS.get(parts.get("kind", ""))
        try:
            with open(os.path.join(self.dir, key + ".o"), "rb") as f:
                data = f.read()
            with open(os.path.join(self.dir, key + ".json"), "rb") as f:
                meta = json.loads(f.read().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("sha256") != \
                    hashlib.sha256(data).hexdigest():
                self.last_miss = "the cached object was damaged (checksum mismatch)"
            else:
                try:
                    if check is not None:
                        check(data)
                    return data
                except LaminaError as e:
                    self.last_miss = f"the cached object was damaged ({e.message})"
        except (OSError, ValueError):  # UnicodeDecodeError and JSON errors are ValueErrors
            previous = self._index().get(name)
            if not isinstance(previous, dict):
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
