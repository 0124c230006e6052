"""The failure drills of ``ctxplane drill`` (ops/RUNBOOK.md §2), run against a running supervisor.

One module a drill (``db_outage``, ``offset_rollback``, ``conflict_storm``, ``actor_fault``), the
steps they share (``steps``), the client-side kit they gather figures with (``kit``), the
controller inside the drilled process (``controller``) and the fault proxy (``faultproxy``).
"""
