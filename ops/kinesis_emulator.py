"""A loopback Kinesis emulator for tests and local runs: moto's server, made AWS-faithful where
ctxplane's tests depend on it.

Usage: ``python ops/kinesis_emulator.py --port PORT`` (binds 127.0.0.1 only; prints one
``listening`` line when ready). ``ops/kinesis_up.sh`` starts it in the background.

Patches (moto 5.x), each restoring documented AWS behaviour that moto's server gets wrong:

1. **Routing after a reshard.** moto routes a record to the *first* shard whose hash range holds
   its key, closed shards included — so after SplitShard every new record still lands in the
   closed parent. AWS routes only to open shards. Patched: open shards only.
2. **SplitShard keeps the parent's records.** moto empties the parent and re-puts its records
   (with patch 1, into the children: they would be delivered twice). AWS leaves them in the
   parent, readable until they expire. Patched: the parent keeps them; the children start empty.
3. **MergeShards keeps the parents' records.** moto copies both parents' records into the child
   (duplicates). Patched as 2.
4. **One request at a time.** moto's Kinesis backend is not thread-safe (sequence numbers are
   ``max + 1`` without a lock; GetRecords iterates a dict that PutRecords grows); the threaded
   werkzeug server would let concurrent producers and consumers corrupt a shard. Patched: a lock
   around the WSGI app (connections stay keep-alive).

Still moto (ctxplane handles both): a closed shard never returns a null ``NextShardIterator``
(its ``EndingSequenceNumber`` is its last record's sequence number instead), and a bogus iterator
gets a plain HTTP 500.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any


def patch_moto() -> None:
    """Apply the patches above to moto's Kinesis models (idempotent).

    Raises:
        RuntimeError: moto's internals changed shape (the patches would be wrong; pin moto < 5.3).
    """
    from moto.kinesis import models

    stream_cls: Any = models.Stream
    if getattr(stream_cls, "_ctxplane_patched", False):
        return
    for name in ("get_shard_for_key", "split_shard", "merge_shards"):
        if not hasattr(stream_cls, name) or not hasattr(models, "md5_hash"):
            raise RuntimeError(f"moto.kinesis.models changed ({name}); the emulator patches need moto 5.1-5.2")
    original_get_shard = stream_cls.get_shard_for_key
    original_split = stream_cls.split_shard
    original_merge = stream_cls.merge_shards

    def get_shard_for_key(self: Any, partition_key: str, explicit_hash_key: str) -> Any:
        # Validation (key length, hash range) as moto does it, then routing among open shards.
        original_get_shard(self, partition_key, explicit_hash_key)
        if explicit_hash_key:
            int_key = int(explicit_hash_key)
        else:
            int_key = int(models.md5_hash(partition_key.encode("utf-8")).hexdigest(), 16)  # type: ignore[attr-defined]
        for shard in self.shards.values():
            if shard.is_open and shard.starting_hash <= int_key <= shard.ending_hash:
                return shard
        return None

    def keeping_records(original: Callable[..., None], shard_names: Callable[..., Iterable[str]]) -> Callable[..., None]:
        def patched(self: Any, *args: Any) -> None:
            saved = {}
            for name in shard_names(*args):
                shard = self.shards.get(name)
                if shard is not None:
                    saved[name] = shard.records
                    shard.records = OrderedDict()  # nothing for moto to move or copy
            try:
                original(self, *args)
            finally:
                for name, records in saved.items():
                    self.shards[name].records = records
        return patched

    stream_cls.get_shard_for_key = get_shard_for_key
    stream_cls.split_shard = keeping_records(original_split, lambda shard, _key: [shard])
    stream_cls.merge_shards = keeping_records(original_merge, lambda first, second: [first, second])
    stream_cls._ctxplane_patched = True


def serve(host: str, port: int) -> None:
    """Run moto's server app (all services; only Kinesis is used) behind one lock."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    patch_moto()
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def locked(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            # Materialise the body under the lock: moto builds it from shared state.
            return list(app(environ, start_response))

    print(f"kinesis emulator (moto, patched) listening on {host}:{port}", flush=True)
    run_simple(host, port, locked, threaded=True, request_handler=MotoRequestHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="loopback only (default 127.0.0.1)")
    args = parser.parse_args(argv)
    if not (args.host.startswith("127.") or args.host in ("localhost", "::1")):
        print("kinesis_emulator: refusing to bind a non-loopback address", file=sys.stderr)
        return 2
    os.environ.setdefault("MOTO_PORT", str(args.port))
    serve(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
