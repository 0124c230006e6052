"""Reason codes: the wire vocabulary of the ledger and of query answers.

Which check gives which code: docs/events.md §Intake; the ledger's codes: docs/protocol.md §Reason codes
of the apply-failure ledger.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ("INTAKE_ORDER", "Reason")


class Reason(StrEnum):
    # Intake, checked in this order; the first failure wins.
    ENVELOPE_MISSING = "ENVELOPE_MISSING"
    ENVELOPE_INVALID = "ENVELOPE_INVALID"
    REPLAY_PINS_MISMATCH = "REPLAY_PINS_MISMATCH"
    TOPIC_NOT_ALLOWED = "TOPIC_NOT_ALLOWED"
    EVENT_CLASS_UNSUPPORTED = "EVENT_CLASS_UNSUPPORTED"
    REQUIRED_PINS_MISSING = "REQUIRED_PINS_MISSING"
    PLATFORM_RUN_ID_MISSING = "PLATFORM_RUN_ID_MISSING"
    RUN_SCOPE_MISMATCH = "RUN_SCOPE_MISMATCH"
    PAYLOAD_INVALID = "PAYLOAD_INVALID"
    JOIN_KEY_MISSING = "JOIN_KEY_MISSING"
    FLOW_ID_MISSING = "FLOW_ID_MISSING"
    # Store-level outcomes.
    INTAKE_PAYLOAD_HASH_MISMATCH = "INTAKE_PAYLOAD_HASH_MISMATCH"
    FLOW_BINDING_CONFLICT = "FLOW_BINDING_CONFLICT"
    JOIN_FRAME_ROLE_CONFLICT = "JOIN_FRAME_ROLE_CONFLICT"
    # The database refused the record's values (a number beyond its column, text it cannot hold):
    # isolated from its group commit and ledgered instead (actors/ingest/isolate.py).
    STORE_REJECTED = "STORE_REJECTED"
    # Annotations: the event was applied, the row only records a remark about it.
    LATE_CONTEXT_EVENT = "LATE_CONTEXT_EVENT"
    LATE_TRAFFIC_EVENT = "LATE_TRAFFIC_EVENT"
    # Query answers.
    READY = "READY"
    FLOW_BINDING_NOT_FOUND = "FLOW_BINDING_NOT_FOUND"
    JOIN_FRAME_NOT_FOUND = "JOIN_FRAME_NOT_FOUND"
    JOIN_FRAME_INCOMPLETE = "JOIN_FRAME_INCOMPLETE"
    PINS_MISMATCH = "PINS_MISMATCH"
    # A required pin the request omits (a pin the protocol declares optional, run_id, may be omitted).
    MISSING_PINS = "MISSING_PINS"
    INVALID_REQUEST = "INVALID_REQUEST"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    OVERLOADED = "OVERLOADED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    # An unexpected exception while answering (a bug): that request's answer only, never retryable.
    INTERNAL_ERROR = "INTERNAL_ERROR"

    @property
    def is_annotation(self) -> bool:
        """True for ledger rows that remark on an applied event rather than reject one."""
        return self in (Reason.LATE_CONTEXT_EVENT, Reason.LATE_TRAFFIC_EVENT)


INTAKE_ORDER: tuple[Reason, ...] = (
    Reason.ENVELOPE_MISSING,
    Reason.ENVELOPE_INVALID,
    Reason.REPLAY_PINS_MISMATCH,
    Reason.TOPIC_NOT_ALLOWED,
    Reason.EVENT_CLASS_UNSUPPORTED,
    Reason.REQUIRED_PINS_MISSING,
    Reason.PLATFORM_RUN_ID_MISSING,
    Reason.RUN_SCOPE_MISMATCH,
    Reason.PAYLOAD_INVALID,
    Reason.JOIN_KEY_MISSING,
    Reason.FLOW_ID_MISSING,
)
