"""Several embedded Triton servers on one machine, all serving one model repository: a stand-in
for a cluster's replicas, balanced by the client (`RecommenderClient` given several urls).

Each replica is a `TritonServer` with its own HTTP, gRPC and metrics ports and its own log; one
that dies is restarted on the same ports (at most `max_restarts` times) while the others keep
serving.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.launcher import BUILD, TritonServer, assemble_backends, until_signalled

log = logging.getLogger(__name__)


def replica_ports(replicas: int, http_port: int | None, grpc_port: int | None, metrics_port: int | None,
                  port_offset: int = 10) -> list[tuple[int | None, int | None, int | None]]:
    """(http, grpc, metrics) ports of each replica: replica i gets base + i * `port_offset`; a
    base of None or 0 means free ports (None in the result: TritonServer picks them).

    Raises ValueError when `replicas` < 1, a port leaves 1..65535, or two replicas' ports clash
    (an offset smaller than the spread of the base ports, e.g. 8000/8001 with offset 1)."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if replicas > 1 and any((http_port, grpc_port, metrics_port)) and port_offset < 1:
        raise ValueError(f"port offset must be at least 1 with {replicas} replicas, got {port_offset}")
    out, seen = [], {}
    for i in range(replicas):
        ports = tuple(p + i * port_offset if p else None for p in (http_port, grpc_port, metrics_port))
        for name, p in zip(("HTTP", "gRPC", "metrics"), ports):
            if p is None:
                continue
            if not 0 < p < 65536:
                raise ValueError(f"replica {i}: {name} port {p} outside 1..65535")
            if p in seen:
                raise ValueError(f"replica {i}: {name} port {p} is also {seen[p]}; "
                                 f"use a port offset larger than the spread of the base ports")
            seen[p] = f"replica {i}'s {name} port"
        out.append(ports)
    return out


@dataclass
class ReplicaEvent:
    """Something that happened to replica `index`: "died" (exit code in `detail`),
    "restarted", "restart failed" (the error) or "down" (no restart left; the others serve)."""
    index: int
    kind: str
    detail: str = ""
    at: float = field(default_factory=time.monotonic)

    def __str__(self) -> str:
        return f"replica {self.index} {self.kind}" + (f": {self.detail}" if self.detail else "")


class ReplicaSet:
    """`with ReplicaSet(repo, replicas=2) as rs:` N ready Triton servers on loopback.

    Ports: base + i * `port_offset` for replica i (None/0: free ports). Logs: `log_dir`/
    replica<i>-http<port>-grpc<port>.log (a restart gets `.restart<n>` before `.log`). One admin
    key for all (None: a random one), so one `aerec reload` key serves every replica.
    Raises ValueError for clashing or taken ports, RuntimeError/TimeoutError when a replica does
    not start (the others are stopped then)."""

    def __init__(self, repository: Path, replicas: int = 2, http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None, port_offset: int = 10,
                 address: str = "127.0.0.1", build_dir: Path | None = None, log_dir: Path | None = None,
                 admin_key: str | None = None, max_restarts: int = 3, supervise: bool = True):
        self.repository = Path(repository)
        self.address, self.supervise, self.max_restarts = address, supervise, max_restarts
        self.build_dir = Path(build_dir or BUILD / "triton")
        self.log_dir = Path(log_dir or self.build_dir)
        self.admin_key = admin_key or secrets.token_urlsafe(32)
        self.restarts = [0] * replicas
        self.events: list[ReplicaEvent] = []
        self.servers = [self._server(i, *ports)
                        for i, ports in enumerate(replica_ports(replicas, http_port, grpc_port, metrics_port,
                                                                port_offset))]

    def _server(self, i: int, http: int | None, grpc: int | None, metrics: int | None,
                restart: int = 0) -> TritonServer:
        server = TritonServer(self.repository, http, grpc, self.address, self.build_dir, admin_key=self.admin_key,
                              supervise=self.supervise, metrics_port=metrics)
        suffix = f".restart{restart}" if restart else ""
        server.log = self.log_dir / f"replica{i}-http{server.http_port}-grpc{server.grpc_port}{suffix}.log"
        return server

    # -- endpoints ------------------------------------------------------------------------------
    def urls(self, protocol: str = "grpc") -> list[str]:
        """Every replica's host:port for `protocol` ("grpc", "http" or "metrics")."""
        attr = {"grpc": "grpc_url", "http": "http_url", "metrics": "metrics_url"}[protocol]
        return [getattr(s, attr) for s in self.servers]

    def alive(self) -> list[bool]:
        """Whether each replica's tritonserver process is running."""
        return [s.process is not None and s.process.poll() is None for s in self.servers]

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> "ReplicaSet":
        """Start every replica at once and wait until all are ready."""
        # Once here, not in N threads at once: the copies are named by pid, which threads share.
        assemble_backends(self.build_dir / "backends")
        errors: list[BaseException | None] = [None] * len(self.servers)

        def start(i: int) -> None:
            try:
                self.servers[i].start(timeout)
            except BaseException as e:  # re-raised below, in the caller's thread
                errors[i] = e
        threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(len(self.servers))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:
            self.stop()
            raise
        for i, e in enumerate(errors):
            if e is not None:
                self.stop()
                raise type(e)(f"replica {i}: {e}") from e
        return self

    def check(self) -> list[ReplicaEvent]:
        """Restart replicas that died (same ports, a new log) while restarts are left; the
        others serve meanwhile. Returns what happened, also logged (WARNING) as it happens and
        appended to `self.events`."""
        events: list[ReplicaEvent] = []

        def happened(*args) -> None:
            events.append(ReplicaEvent(*args))
            log.warning("%s", events[-1])  # at once: a restart takes seconds
        for i, server in enumerate(self.servers):
            if server.process is None or server.process.poll() is None:
                continue
            if getattr(server, "_reported", False):
                continue  # already down for good
            happened(i, "died", f"exit code {server.process.returncode}, log {server.log}")
            server.stop()  # closes its log, clears any stub left behind
            if self.restarts[i] >= self.max_restarts:
                server._reported = True
                happened(i, "down", f"{self.max_restarts} restarts spent; the others serve")
                continue
            self.restarts[i] += 1
            try:
                new = self._server(i, server.http_port, server.grpc_port, server.metrics_port, self.restarts[i])
                self.servers[i] = new  # so that stop() reaches it even while it starts
                new.start()
                happened(i, "restarted", f"HTTP {new.http_url}, gRPC {new.grpc_url}, log {new.log}")
            except (RuntimeError, TimeoutError, ValueError, OSError) as e:
                self.servers[i].stop()
                happened(i, "restart failed", str(e).splitlines()[0])
        self.events += events
        return events

    def stop(self) -> None:
        """Stop every replica (SIGTERM, then SIGKILL after 20 s), all at once."""
        threads = [threading.Thread(target=s.stop) for s in self.servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def serve_forever(self, on_ready=None, on_event=None, interval: float = 0.5) -> None:
        """Start every replica, call `on_ready(self)`, then watch them: a dead replica is
        restarted (each event goes to `on_event(event)`). Returns on Ctrl-C / SIGTERM, stopping
        them all; raises RuntimeError once no replica is left running."""
        with until_signalled(self.stop):
            self.start()
            if on_ready:
                on_ready(self)
            while True:
                time.sleep(interval)
                for event in self.check():
                    if on_event:
                        on_event(event)
                if not any(self.alive()):
                    raise RuntimeError("every replica is down; see their logs: "
                                       + ", ".join(str(s.log) for s in self.servers))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
