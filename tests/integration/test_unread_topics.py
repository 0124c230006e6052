"""A topic nothing reads is said out loud: `bus publish` warns (with the topic it was probably meant to
be), and `status` lists the topics on the bus that no plane reads. Through the real CLI and process."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.process import CtxplaneProcess, ctxplane, write_config
from tests.support.workload import ARRIVAL, context_events

TYPO = "fp.bus.context.arival_events.v1"


def _events(tmp_path: Path) -> Path:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(env) + "\n" for _, env in context_events(1)), encoding="utf-8")
    return source


def test_publishing_to_a_topic_no_plane_reads_warns_with_the_closest_consumed_topic(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}")
    source = _events(tmp_path)
    fine = ctxplane("bus", "publish", "--config", str(config), "--topic", ARRIVAL[0], str(source))
    assert (fine.returncode, fine.stderr) == (0, "")
    typo = ctxplane("bus", "publish", "--config", str(config), "--topic", TYPO, str(source))
    assert typo.returncode == 0 and typo.stdout == f"published 3 records to {TYPO} (1 partitions)\n"
    assert typo.stderr == (f"ctxplane: warning: no plane of {config} reads topic {TYPO}, so its records will not be"
                           f" applied (did you mean {ARRIVAL[0]}?)\n")
    # A plane switched off reads nothing: its topics are unread too.
    (tmp_path / "off").mkdir()
    off = write_config(tmp_path / "off", f"sqlite:///{tmp_path / 's.sqlite'}", features={"enabled": False},
                       join_plane={"enabled": False})
    none = ctxplane("bus", "publish", "--config", str(off), "--topic", ARRIVAL[0], str(source))
    assert none.returncode == 0 and "(no plane is enabled)" in none.stderr
    # --root has no config: the default planes decide.
    other = ctxplane("bus", "publish", "--root", str(tmp_path / "eb2"), "--topic", "my.topic", str(source))
    assert other.returncode == 0 and "no plane of the default configuration (--root names no config) reads topic my.topic" \
        in other.stderr and "fp.bus.traffic.fraud.v1" in other.stderr


def test_status_lists_the_topics_on_the_bus_that_no_plane_reads(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 's.sqlite'}")
    source = _events(tmp_path)
    for topic, partitions in ((ARRIVAL[0], "2"), (TYPO, "3"), ("audit.v1", "1")):
        assert ctxplane("bus", "publish", "--config", str(config), "--topic", topic, "--partitions", partitions,
                        str(source)).returncode == 0
    with CtxplaneProcess(config):
        text = ctxplane("status", "--config", str(config))
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        at = lines.index("topics on the bus that no plane reads (their records are never applied):")
        assert lines[at + 1:at + 3] == ["  audit.v1 (1 partitions)",
                                        f"  {TYPO} (3 partitions; did you mean {ARRIVAL[0]}?)"]
        as_json = json.loads(ctxplane("status", "--config", str(config), "--json").stdout)
        assert as_json["unread_topics"] == [
            {"topic": "audit.v1", "partitions": 1, "did_you_mean": None},
            {"topic": TYPO, "partitions": 3, "did_you_mean": ARRIVAL[0]},
        ]
