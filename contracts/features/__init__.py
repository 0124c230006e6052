"""The feature plane's pure core: policy, event time, exact window plans, tiles and aggregates.

Nothing here does I/O (except :func:`load_policy`, which reads the one policy file) or touches an
event loop: the partition actors, the store-writer and the query actor feed data in and get rows,
plans and served values out. See ``_windows`` for the tile convention and ``_aggregate`` for why
amounts are exact integers.
"""

from __future__ import annotations

from ctxplane.contracts.features.aggregate import AGGREGATIONS as AGGREGATIONS
from ctxplane.contracts.features.aggregate import AMOUNT_SCALE as AMOUNT_SCALE
from ctxplane.contracts.features.aggregate import MAX_ABS_AMOUNT as MAX_ABS_AMOUNT
from ctxplane.contracts.features.aggregate import Agg as Agg
from ctxplane.contracts.features.aggregate import parse_amount as parse_amount
from ctxplane.contracts.features.aggregate import present as present
from ctxplane.contracts.features.aggregate import units_to_number as units_to_number
from ctxplane.contracts.features.policy import (
    DEFAULT_AGGREGATIONS as DEFAULT_AGGREGATIONS,
)
from ctxplane.contracts.features.policy import DEFAULT_KEY_TYPE as DEFAULT_KEY_TYPE
from ctxplane.contracts.features.policy import FeatureGroup as FeatureGroup
from ctxplane.contracts.features.policy import FeaturePolicy as FeaturePolicy
from ctxplane.contracts.features.policy import PolicyError as PolicyError
from ctxplane.contracts.features.policy import WindowSpec as WindowSpec
from ctxplane.contracts.features.policy import (
    default_policy_path as default_policy_path,
)
from ctxplane.contracts.features.policy import load_policy as load_policy
from ctxplane.contracts.features.policy import parse_duration as parse_duration
from ctxplane.contracts.features.policy import parse_policy as parse_policy
from ctxplane.contracts.features.policy import run_config_digest as run_config_digest
from ctxplane.contracts.features.tiles import RawRow as RawRow
from ctxplane.contracts.features.tiles import RawValue as RawValue
from ctxplane.contracts.features.tiles import TileBatch as TileBatch
from ctxplane.contracts.features.tiles import TileRow as TileRow
from ctxplane.contracts.features.tiles import TileValue as TileValue
from ctxplane.contracts.features.tiles import TrafficEvent as TrafficEvent
from ctxplane.contracts.features.tiles import (
    as_of_beyond_retention as as_of_beyond_retention,
)
from ctxplane.contracts.features.tiles import evaluate as evaluate
from ctxplane.contracts.features.tiles import first_kept_tile as first_kept_tile
from ctxplane.contracts.features.tiles import key_tiles as key_tiles
from ctxplane.contracts.features.tiles import merge_tile_row as merge_tile_row
from ctxplane.contracts.features.tiles import prune_before as prune_before
from ctxplane.contracts.features.tiles import tile_deltas as tile_deltas
from ctxplane.contracts.features.windows import DAY_US as DAY_US
from ctxplane.contracts.features.windows import HOUR_US as HOUR_US
from ctxplane.contracts.features.windows import LEVELS_SECONDS as LEVELS_SECONDS
from ctxplane.contracts.features.windows import MINUTE_US as MINUTE_US
from ctxplane.contracts.features.windows import US_PER_SECOND as US_PER_SECOND
from ctxplane.contracts.features.windows import RawRange as RawRange
from ctxplane.contracts.features.windows import TileRange as TileRange
from ctxplane.contracts.features.windows import WindowPlan as WindowPlan
from ctxplane.contracts.features.windows import decompose as decompose
from ctxplane.contracts.features.windows import format_ts_us as format_ts_us
from ctxplane.contracts.features.windows import parse_ts_us as parse_ts_us
from ctxplane.contracts.features.windows import tile_id as tile_id
from ctxplane.contracts.features.windows import tile_span_us as tile_span_us

__all__ = (
    "AGGREGATIONS",
    "AMOUNT_SCALE",
    "DAY_US",
    "DEFAULT_AGGREGATIONS",
    "DEFAULT_KEY_TYPE",
    "HOUR_US",
    "LEVELS_SECONDS",
    "MAX_ABS_AMOUNT",
    "MINUTE_US",
    "US_PER_SECOND",
    "Agg",
    "FeatureGroup",
    "FeaturePolicy",
    "PolicyError",
    "RawRange",
    "RawRow",
    "RawValue",
    "TileBatch",
    "TileRange",
    "TileRow",
    "TileValue",
    "TrafficEvent",
    "WindowPlan",
    "WindowSpec",
    "as_of_beyond_retention",
    "decompose",
    "default_policy_path",
    "evaluate",
    "first_kept_tile",
    "format_ts_us",
    "key_tiles",
    "load_policy",
    "merge_tile_row",
    "parse_amount",
    "parse_duration",
    "parse_policy",
    "parse_ts_us",
    "present",
    "prune_before",
    "run_config_digest",
    "tile_deltas",
    "tile_id",
    "tile_span_us",
    "units_to_number",
)
