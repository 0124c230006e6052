"""Event types, the classes they map to, and which plane and join role each class feeds."""

from __future__ import annotations

from enum import StrEnum

__all__ = (
    "ANCHOR_EVENT_TYPES",
    "EVENT_CLASS_BY_TYPE",
    "IGNORED_EVENT_TYPES",
    "PLANE_BY_CLASS",
    "ROLE_BY_CLASS",
    "Plane",
    "Role",
)


class Plane(StrEnum):
    JOIN = "join"
    FEATURES = "features"


class Role(StrEnum):
    ARRIVAL_EVENT = "arrival_event"
    ARRIVAL_ENTITIES = "arrival_entities"
    FLOW_ANCHOR = "flow_anchor"


EVENT_CLASS_BY_TYPE: dict[str, str] = {
    "arrival_events_5B": "context_arrival",
    "s1_arrival_entities_6B": "context_arrival_entities",
    "s2_flow_anchor_baseline_6B": "context_flow_baseline",
    "s3_flow_anchor_with_fraud_6B": "context_flow_fraud",
    "s2_event_stream_baseline_6B": "traffic_baseline",
    "s3_event_stream_with_fraud_6B": "traffic_fraud",
}

PLANE_BY_CLASS: dict[str, Plane] = {
    "context_arrival": Plane.JOIN,
    "context_arrival_entities": Plane.JOIN,
    "context_flow_baseline": Plane.JOIN,
    "context_flow_fraud": Plane.JOIN,
    "traffic_baseline": Plane.FEATURES,
    "traffic_fraud": Plane.FEATURES,
}

ROLE_BY_CLASS: dict[str, Role] = {
    "context_arrival": Role.ARRIVAL_EVENT,
    "context_arrival_entities": Role.ARRIVAL_ENTITIES,
    "context_flow_baseline": Role.FLOW_ANCHOR,
    "context_flow_fraud": Role.FLOW_ANCHOR,
}

# Only flow anchors may write FlowBindings.
ANCHOR_EVENT_TYPES = frozenset({"s2_flow_anchor_baseline_6B", "s3_flow_anchor_with_fraud_6B"})

# Decision outputs share the traffic topics; they are not inputs of either plane: ignored and counted.
IGNORED_EVENT_TYPES = frozenset({"decision_response", "action_intent", "action_outcome"})
