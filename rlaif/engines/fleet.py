"""Several OpenAI-compatible servers serving one model, used as one engine.

Each request goes to the healthy server with the fewest requests in flight, never more than
`max_concurrency` at a time on any one. A server that fails (a dropped connection, a timeout, a
5xx or 429) is left for the next request to another server at once; after `DOWN_AFTER` failures
in a row it leaves the rotation for a while (doubling, at most `MAX_DOWN_S`) and comes back on
its own. Results do not depend on which server answered: each request carries its own seed, and
the engine returns results in input order.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

DOWN_AFTER = 2  # failures in a row before a server leaves the rotation
MAX_DOWN_S = 60.0


@dataclass
class Server:
    url: str
    slots: threading.Semaphore
    in_flight: int = 0
    failures: int = 0  # in a row
    down_until: float = 0.0  # time.monotonic() before which it gets no requests


@dataclass
class ServerPool:
    urls: list[str]
    max_concurrency: int
    down_base_s: float = 1.0
    servers: list[Server] = field(init=False)
    lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self):
        self.servers = [Server(u, threading.Semaphore(self.max_concurrency)) for u in self.urls]

    @property
    def capacity(self) -> int:
        """Requests that may be in flight over all servers."""
        return self.max_concurrency * len(self.servers)

    def pick(self, avoid: str | None = None) -> Server | None:
        """The server for the next attempt (counted in flight), or None while all are down."""
        now = time.monotonic()
        with self.lock:
            up = [s for s in self.servers if s.down_until <= now]
            others = [s for s in up if s.url != avoid]
            candidates = others or up
            if not candidates:
                return None
            server = min(candidates, key=lambda s: (s.in_flight, s.failures))
            server.in_flight += 1
        server.slots.acquire()
        return server

    def release(self, server: Server, ok: bool) -> None:
        server.slots.release()
        with self.lock:
            server.in_flight -= 1
            if ok:
                server.failures, server.down_until = 0, 0.0
                return
            server.failures += 1
            if len(self.servers) > 1 and server.failures >= DOWN_AFTER:
                pause = min(MAX_DOWN_S, self.down_base_s * 2 ** (server.failures - DOWN_AFTER))
                server.down_until = time.monotonic() + pause

    def another_is_up(self, server: Server) -> bool:
        now = time.monotonic()
        with self.lock:
            return any(s is not server and s.down_until <= now for s in self.servers)

    def seconds_until_one_is_up(self) -> float:
        now = time.monotonic()
        with self.lock:
            return max(0.0, min(s.down_until for s in self.servers) - now)
