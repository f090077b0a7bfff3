"""Errors raised by lamina, and the source locations they point at.

Every error that stems from user code carries the user's file and line (``SourceLoc``), so the
message names the line of the model that caused it, not a line inside lamina.
"""

from __future__ import annotations

import linecache
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLoc:
    """Where a node came from: the DSL line that created it.

    ``note`` marks derived nodes, e.g. ``"grad"`` for the backward of that line.
    """

    file: str
    line: int
    note: str = ""

    @property
    def short(self) -> str:
        """``file.py:12``, the form the IR printer writes."""
        return f"{os.path.basename(self.file)}:{self.line}"

    def __str__(self) -> str:
        s = self.short
        return f"{s} ({self.note})" if self.note else s

    def source_line(self) -> str:
        """The text of the line, when the file is readable (empty otherwise)."""
        return linecache.getline(self.file, self.line).strip()

    def with_note(self, note: str) -> SourceLoc:
        return SourceLoc(self.file, self.line, note)


def describe_loc(loc: SourceLoc | None) -> str:
    """``  at model.py:12: return x @ w`` or an empty string."""
    if loc is None:
        return ""
    text = loc.source_line()
    where = f"{loc.file}:{loc.line}"
    return f"\n  at {where}: {text}" if text else f"\n  at {where}"


class LaminaError(Exception):
    """Base of all lamina errors. ``loc`` names the user's source line when known."""

    def __init__(self, message: str, loc: SourceLoc | None = None):
        self.message = message
        self.loc = loc
        super().__init__(message + describe_loc(loc))

    def at(self, loc: SourceLoc | None):
        """The same error, located at ``loc`` (kept if it already has a location)."""
        if self.loc is not None or loc is None:
            return self
        err = type(self).__new__(type(self))
        LaminaError.__init__(err, self.message, loc)
        return err


class ShapeError(LaminaError, ValueError):
    """Shapes that do not fit the op (broadcasting, matmul, reshape, ...)."""


class DTypeError(LaminaError, TypeError):
    """A dtype the op does not accept."""


class TraceError(LaminaError):
    """Something the tracer cannot record (Python control flow on a traced value, ...)."""


class GradError(LaminaError):
    """A request for a gradient that does not exist (non-scalar loss, integer input, ...)."""


class VerifyError(LaminaError):
    """The graph breaks an IR invariant; raised by the verifier."""


class ParseError(LaminaError):
    """Text that is not valid lamina IR; the message names line and column."""


class SignatureError(LaminaError, TypeError):
    """Arguments that do not match a compiled function's signature."""


class ArtifactError(LaminaError):
    """A saved artifact that is corrupt, from another version, or for another target."""


class ConfigError(LaminaError, ValueError):
    """A ``LAMINA_*`` environment variable (or a ``config`` flag) with a value lamina cannot
    use; the message names the variable and the values it accepts."""


class LaminaWarning(UserWarning):
    """Base of lamina's warnings (filter them with ``warnings.simplefilter(..., LaminaWarning)``)."""


class PromotionWarning(LaminaWarning):
    """numpy's dtype promotion widened a computation the user probably meant to keep narrow: an
    argument of a wider float type (float64) met a parameter of a narrower one (float32)."""
