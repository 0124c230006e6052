"""The vocabulary of query answers: every ``status`` and every error ``code`` (docs/protocol.md).

String enums, so an answer carries them as plain JSON strings and a decoded answer compares equal
to them; code that sets or tests a status names a member, never a literal.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ("ERROR_STATUSES", "JOIN_MISSES", "RETRYABLE_FEATURE_CODES", "ErrorCode", "Status")


class Status(StrEnum):
    """The ``status`` of an answer."""

    # Join plane (docs/protocol.md §Join-plane answers).
    READY = "READY"
    MISSING_BINDING = "MISSING_BINDING"
    MISSING_JOIN_FRAME = "MISSING_JOIN_FRAME"
    CONFLICT = "CONFLICT"
    # Every other op's answer.
    OK = "OK"
    # Errors (docs/protocol.md §Errors): the join ops answer INVALID_REQUEST / UNAVAILABLE with
    # their reason codes; every other op answers ERROR with a ``code``.
    INVALID_REQUEST = "INVALID_REQUEST"
    UNAVAILABLE = "UNAVAILABLE"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """The ``code`` of an ``ERROR`` answer."""

    INVALID_REQUEST = "INVALID_REQUEST"
    UNAVAILABLE = "UNAVAILABLE"
    MISSING_PINS = "MISSING_PINS"
    PINS_MISMATCH = "PINS_MISMATCH"
    OVERLOADED = "OVERLOADED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    DRILLS_DISABLED = "DRILLS_DISABLED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


#: A join answer that is not ready yet: a ``wait_ms`` request waits for a commit, health counts a miss.
JOIN_MISSES = frozenset({Status.MISSING_BINDING, Status.MISSING_JOIN_FRAME})
#: Answers that are errors (MISSING_* and CONFLICT are answers, not errors).
ERROR_STATUSES = frozenset({Status.ERROR, Status.INVALID_REQUEST, Status.UNAVAILABLE})
#: Feature-plane error codes a client may retry.
RETRYABLE_FEATURE_CODES = frozenset({ErrorCode.UNAVAILABLE})
