"""get_features accepts any RFC 3339 instant for as_of_time_utc and answers in the canonical form:
every spelling of one instant gets the same snapshot (same values, freshness and snapshot_hash)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import PINS, TRAFFIC_FRAUD, envelope, event_id, publish

CORE = {"name": "core_features", "version": "v1"}


def _features(config: Path, as_of: str) -> dict[str, Any]:
    request = {"op": "get_features", "pins": PINS, "as_of_time_utc": as_of, "feature_groups": [CORE],
               "feature_keys": [{"key_type": "flow_id", "key_id": "flow-1"}]}
    result = ctxplane("query", "--config", str(config), json.dumps(request))
    answer = json.loads(result.stdout)
    assert result.returncode == 0 and answer["status"] == "OK", answer
    return answer["snapshot"]  # type: ignore[no-any-return]


def test_any_rfc3339_spelling_of_as_of_gets_the_canonical_answer(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}", join_plane={"enabled": False})
    publish(tmp_path / "eb", [
        (TRAFFIC_FRAUD[0], envelope(TRAFFIC_FRAUD[1], {"flow_id": "flow-1", "amount": 5}, eid=event_id("t", n), ts_s=n))
        for n in (1, 2)], partitions=1)
    assert ctxplane("run", "--config", str(config), "--once").returncode == 0
    with CtxplaneProcess(config):
        canonical = _features(config, "2026-02-07T05:00:02.000000Z")
        assert canonical["features"]["core_features"]["flow_id:flow-1"]["1h"]["event_count"] == 2
        assert canonical["freshness"]["state"] == "GREEN"
        for spelling in ("2026-02-07T05:00:02Z", "2026-02-07T06:00:02+01:00", "2026-02-07t05:00:02.0z",
                         "2026-02-07T01:30:02.000000999-03:30"):
            snap = _features(config, spelling)
            assert snap["as_of_time_utc"] == "2026-02-07T05:00:02.000000Z", spelling
            assert snap == canonical, spelling  # same values, same freshness (not STALE), same snapshot_hash
        # Below the microsecond the instant is floored: 05:00:01.999999999 does not reach the event at 05:00:02.
        before = _features(config, "2026-02-07T05:00:01.999999999Z")
        assert before["as_of_time_utc"] == "2026-02-07T05:00:01.999999Z"
        assert before["features"]["core_features"]["flow_id:flow-1"]["1h"]["event_count"] == 1
        bad = ctxplane("query", "--config", str(config), json.dumps(
            {"op": "get_features", "pins": PINS, "as_of_time_utc": "2026-02-07 05:00:02", "feature_groups": [CORE],
             "feature_keys": [{"key_type": "flow_id", "key_id": "flow-1"}]}))
        answer = json.loads(bad.stdout)
        assert bad.returncode == 1 and answer["code"] == "INVALID_REQUEST"
        assert answer["detail"].startswith("as_of_time_utc: timestamp '2026-02-07 05:00:02' is not an RFC 3339 instant")
