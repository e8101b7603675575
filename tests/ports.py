"""Ports for the servers tests start (Ray heads, Ray Serve, SeaweedFS).

Picked from 20000-32767: above Ray's fixed ports and below the kernel's ephemeral range
(32768-60999 here), where every Ray worker's gRPC server and every outgoing connection takes
its port. A port the kernel hands out as free on 127.0.0.1 can be one a Ray worker holds on the
node's own address, and Ray Serve's proxy then fails to bind it (seen in CI). A candidate counts
as free only if it binds on every address.
"""
from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32767
_rng = random.Random()


def is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
        return True


def free_ports(count: int, taken: set[int] = frozenset(), offset: int = 0) -> list[int]:
    """`count` distinct free ports; with `offset`, port + offset is free (and in range) too."""
    ports: list[int] = []
    used = set(taken)
    for _ in range(1000):
        port = _rng.randrange(LOW, HIGH + 1 - offset)
        pair = {port, port + offset}
        if not pair & used and all(map(is_free, pair)):
            ports.append(port)
            used |= pair
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free ports in {LOW}-{HIGH} on this machine")


def free_port() -> int:
    return free_ports(1)[0]
