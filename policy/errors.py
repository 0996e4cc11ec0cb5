"""The one exception family of ttc-allocator.

Every error a user can cause derives from `TTCError`; the CLI turns it into a
one-line message and exit code 2. Messages say how to fix the problem.
This module must never import anything beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable


class TTCError(Exception):
    """Base class of every error this package raises on purpose."""


class UsageError(TTCError):
    """Bad input from the user: an unknown name, a malformed file, an empty grid."""


class BundleError(TTCError):
    """A policy bundle that is missing, tampered with, or of an unknown schema."""


class MeterError(TTCError):
    """An energy meter that cannot be read (missing files, permissions, no device)."""


class MixedEnergyError(TTCError):
    """Measured and estimated joules were about to be compared as if alike."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UsageError:
    """The standard 'unknown X' error: names the bad value and every valid one."""
    return UsageError(f"unknown {kind} {name!r}, known: {', '.join(sorted(known))}")
