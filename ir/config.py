"""lamina's switches, one place: each reads a ``LAMINA_*`` environment variable once at import
and can be overridden for a block with ``config.patch(...)``.

    >>> from lamina.ir import config
    >>> with config.patch(verify=True):
    ...     config.verify
    True
"""

from __future__ import annotations

import contextlib
import os


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw not in ("0", "false", "no", "off")


# Amount of logging on stderr: 0 quiet, 1 compiles and cache misses, 2 pass timings, 3 more.
debug: int = _env_int("LAMINA_DEBUG", 0)
# Print the IR after these passes: "all" or a comma list of pass names ("" for none).
print_after: str = os.environ.get("LAMINA_PRINT_AFTER", "")
# With print_after, print only after passes that changed the IR.
print_changed: bool = _env_bool("LAMINA_PRINT_CHANGED", False)
# Write one numbered .lir file per pass (and generated code) under this directory.
dump: str = os.environ.get("LAMINA_DUMP", "")
# Run the verifier after every pass (always on in debug mode).
verify: bool = _env_bool("LAMINA_VERIFY", debug >= 1)
# After every pass, check that printing, parsing and printing again gives the same text.
check_roundtrip: bool = _env_bool("LAMINA_CHECK_ROUNDTRIP", False)

_FLAGS = ("debug", "print_after", "print_changed", "dump", "verify", "check_roundtrip")


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
