"""The root of ctxplane's error taxonomy, defined in the pure core so every layer can raise it.

``ctxplane.runtime.exceptions`` re-exports these and adds the kernel's and the adapters' errors.
"""

from __future__ import annotations

__all__ = ("ConfigError", "CtxplaneError", "UsageError")


class CtxplaneError(Exception):
    """Root of every error ctxplane raises on purpose."""


class UsageError(CtxplaneError):
    """A user mistake on the command line or in a file they named (exit code 2)."""


class ConfigError(UsageError):
    """The configuration is invalid; the message names the key and what is wrong."""
