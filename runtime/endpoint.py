"""The query endpoint's address, as ``query.listen`` spells it: shared by the server and the clients.

Kept apart from the server so that a client-only install (``pip install ctxplane``, without the
``server`` extra) imports nothing the server needs.
"""

from __future__ import annotations

__all__ = ("parse_listen",)


def parse_listen(listen: str) -> tuple[str, str, int]:
    """``unix:PATH`` -> ("unix", PATH, 0); ``tcp://HOST:PORT`` -> ("tcp", HOST, PORT)."""
    if listen.startswith("unix:"):
        return "unix", listen[len("unix:") :], 0
    host, _, port = listen[len("tcp://") :].rpartition(":")
    return "tcp", host, int(port)
