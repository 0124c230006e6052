"""The feature plane's pure core: policy, event time, exact window plans, tiles and aggregates.

Nothing here does I/O (except :func:`load_policy`, which reads the one policy file) or touches an
event loop: the partition actors, the store-writer and the query actor feed data in and get rows,
plans and served values out. See ``_windows`` for the tile convention and ``_aggregate`` for why
amounts are exact integers.
"""

from __future__ import annotations

from contracts.features._aggregate import AGGREGATIONS as AGGREGATIONS
from contracts.features._aggregate import AMOUNT_SCALE as AMOUNT_SCALE
from contracts.features._aggregate import MAX_ABS_AMOUNT as MAX_ABS_AMOUNT
from contracts.features._aggregate import Agg as Agg
from contracts.features._aggregate import parse_amount as parse_amount
from contracts.features._aggregate import present as present
from contracts.features._aggregate import units_to_number as units_to_number
from contracts.features._policy import DEFAULT_AGGREGATIONS as DEFAULT_AGGREGATIONS
from contracts.features._policy import DEFAULT_KEY_TYPE as DEFAULT_KEY_TYPE
from contracts.features._policy import FeatureGroup as FeatureGroup
from contracts.features._policy import FeaturePolicy as FeaturePolicy
from contracts.features._policy import PolicyError as PolicyError
from contracts.features._policy import WindowSpec as WindowSpec
from contracts.features._policy import default_policy_path as default_policy_path
from contracts.features._policy import load_policy as load_policy
from contracts.features._policy import parse_duration as parse_duration
from contracts.features._policy import parse_policy as parse_policy
from contracts.features._policy import run_config_digest as run_config_digest
from contracts.features._tiles import RawRow as RawRow
from contracts.features._tiles import RawValue as RawValue
from contracts.features._tiles import TileBatch as TileBatch
from contracts.features._tiles import TileRow as TileRow
from contracts.features._tiles import TileValue as TileValue
from contracts.features._tiles import TrafficEvent as TrafficEvent
from contracts.features._tiles import as_of_beyond_retention as as_of_beyond_retention
from contracts.features._tiles import evaluate as evaluate
from contracts.features._tiles import first_kept_tile as first_kept_tile
from contracts.features._tiles import merge_tile_row as merge_tile_row
from contracts.features._tiles import prune_before as prune_before
from contracts.features._tiles import tile_deltas as tile_deltas
from contracts.features._windows import DAY_US as DAY_US
from contracts.features._windows import HOUR_US as HOUR_US
from contracts.features._windows import LEVELS_SECONDS as LEVELS_SECONDS
from contracts.features._windows import MINUTE_US as MINUTE_US
from contracts.features._windows import US_PER_SECOND as US_PER_SECOND
from contracts.features._windows import RawRange as RawRange
from contracts.features._windows import TileRange as TileRange
from contracts.features._windows import WindowPlan as WindowPlan
from contracts.features._windows import decompose as decompose
from contracts.features._windows import format_ts_us as format_ts_us
from contracts.features._windows import parse_ts_us as parse_ts_us
from contracts.features._windows import tile_id as tile_id
from contracts.features._windows import tile_span_us as tile_span_us

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
