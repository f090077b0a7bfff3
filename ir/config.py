"""lamina's switches, one place: every ``LAMINA_*`` environment variable is read and checked here.

The flags below read their variable once at import and can be overridden for a block with
``config.patch(...)``; the readers below them (``num_threads()``, ``cache_enabled()``, ...) read
theirs when asked, for the modules that look them up at use. A value that cannot be used is a
``ConfigError`` naming the variable and what it accepts, never a silent default:

    >>> from lamina.ir import config
    >>> with config.patch(verify=True):
    ...     config.verify
    True
    >>> import os
    >>> saved = os.environ.get("LAMINA_NUM_THREADS", "")
    >>> os.environ["LAMINA_NUM_THREADS"] = "abc"
    >>> config.num_threads()
    Traceback (most recent call last):
    ...
    lamina.ir.errors.ConfigError: LAMINA_NUM_THREADS='abc': must be a positive integer ...
    >>> os.environ["LAMINA_NUM_THREADS"] = saved  # empty counts as unset

Variables read elsewhere: ``LAMINA_PRINT_AFTER``'s pass names are checked by the pass manager
(only it knows the passes), ``LAMINA_DUMP`` when the dump folder is created.
"""

from __future__ import annotations

import contextlib
import os

from lamina.ir.errors import ConfigError, LaminaError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _raw(name: str) -> str:
    return os.environ.get(name, "").strip()


def env_int(name: str, default: int, minimum: int | None = None, what: str = "") -> int:
    """``$name`` as an integer (``default`` when unset or empty), at least ``minimum``."""
    raw = _raw(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}")
        raise ConfigError(f"{name}={raw!r}: must be {kind}" + (f" ({what})" if what else ""))
    return value


def env_bool(name: str, default: bool) -> bool:
    """``$name`` as a switch: 1/true/yes/on or 0/false/no/off (any case); ``default`` when
    unset. Anything else is an error (a typo such as ``LAMINA_VERIFY=ture`` must not pass for
    "on" or "off")."""
    raw = _raw(name).lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}={os.environ[name].strip()!r}: must be one of "
                      f"{', '.join(_TRUE)} (on) or {', '.join(_FALSE)} (off)")


def env_str(name: str, default: str = "") -> str:
    """``$name`` with surrounding blanks removed (``default`` when unset or empty)."""
    return _raw(name) or default


def env_choice(name: str, choices: tuple[str, ...]) -> str | None:
    """``$name``, lowercased, one of ``choices``; None when unset."""
    raw = _raw(name).lower()
    if not raw:
        return None
    if raw not in choices:
        raise ConfigError(f"{name}={raw!r}: use {' or '.join(repr(c) for c in choices)}")
    return raw


def env_list(name: str, check) -> tuple[str, ...] | None:
    """``$name`` as a comma-separated list, each item passed to ``check`` (which raises a
    LaminaError for a bad one); None when unset or empty."""
    raw = _raw(name)
    items = tuple(t.strip() for t in raw.split(",") if t.strip())
    if not items:
        return None
    for item in items:
        try:
            check(item)
        except LaminaError as e:
            raise ConfigError(f"{name}={raw!r}: {e.message}") from None
    return items


def num_threads() -> int | None:
    """``LAMINA_NUM_THREADS``: worker threads for CPU kernels (None when unset: the caller
    picks its default)."""
    n = env_int("LAMINA_NUM_THREADS", 0, minimum=1,
                what="the number of threads for CPU kernels")
    return n or None


def cache_enabled() -> bool:
    """``LAMINA_CACHE``: whether compiled code is cached on disk (on by default)."""
    return env_bool("LAMINA_CACHE", True)


def cache_dir() -> str | None:
    """``LAMINA_CACHE_DIR``: where the compile cache lives (None when unset: the default)."""
    return env_str("LAMINA_CACHE_DIR") or None


# Amount of logging on stderr: 0 quiet, 1 compiles and cache misses, 2 pass timings, 3 more.
debug: int = env_int("LAMINA_DEBUG", 0, minimum=0, what="0 quiet, 1 compiles, 2 pass timings")
# Print the IR after these passes: "all" or a comma list of pass names ("" for none).
print_after: str = env_str("LAMINA_PRINT_AFTER")
# With print_after, print only after passes that changed the IR.
print_changed: bool = env_bool("LAMINA_PRINT_CHANGED", False)
# Write one numbered .lir file per pass (and generated code) under this directory.
dump: str = env_str("LAMINA_DUMP")
# Run the verifier after every pass (always on in debug mode).
verify: bool = env_bool("LAMINA_VERIFY", debug >= 1)
# After every pass, check that printing, parsing and printing again gives the same text.
check_roundtrip: bool = env_bool("LAMINA_CHECK_ROUNDTRIP", False)

_FLAGS = ("debug", "print_after", "print_changed", "dump", "verify", "check_roundtrip")
# The variable behind each flag, for error messages about a flag's value.
ENV_OF = {"debug": "LAMINA_DEBUG", "print_after": "LAMINA_PRINT_AFTER",
          "print_changed": "LAMINA_PRINT_CHANGED", "dump": "LAMINA_DUMP",
          "verify": "LAMINA_VERIFY", "check_roundtrip": "LAMINA_CHECK_ROUNDTRIP"}


@contextlib.contextmanager
def patch(**flags):
    """Override flags inside a ``with`` block; unknown names are an error."""
    g = globals()
    unknown = set(flags) - set(_FLAGS)
    if unknown:
        raise AttributeError(f"unknown lamina config flag(s) {sorted(unknown)}; "
                             f"flags are {', '.join(_FLAGS)}")
    old = {k: g[k] for k in flags}
    g.update(flags)
    try:
        yield
    finally:
        g.update(old)
