"""`aerec serve` (the embedded Triton server on a model repository, or several replicas of it)
and `aerec reload` (a running server loads the newest versions, with the admin key)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import DEFAULT_REPOSITORY, fail


def serve(
    repository: Path = typer.Option(DEFAULT_REPOSITORY, "--repository"),
    http_port: int = typer.Option(8000, help="0: a free port"),
    grpc_port: int = typer.Option(8001, help="0: a free port"),
    metrics_port: int = typer.Option(0, help="Prometheus metrics; 0: a free port"),
    replicas: int = typer.Option(1, min=1, help="servers on this machine, each on its own ports (base + i * offset)"),
    port_offset: int = typer.Option(10, help="replica i listens on each base port + i * this"),
    address: str = typer.Option("127.0.0.1", help="bind address; loopback unless you ask"),
    admin_key_file: Optional[Path] = typer.Option(
        None, help="enable model load/unload (e.g. `aerec reload`) for holders of the key in this file "
                   "(created, mode 600, if missing); without it nobody can change what is served"),
):
    """Run the embedded Triton server on REPOSITORY until Ctrl-C; with --replicas N, N of them
    (a replica that dies is restarted while the others serve)."""
    from server.admin import RESTRICTED, AdminKeyError, create_admin_key, read_admin_key
    from server.deploy.shared_memory import dev_shm_warning
    from server.launcher import TritonServer
    if not repository.is_dir():
        fail(f"{repository}: no model repository; build one with `aerec repository RUN_DIR`")
    key = None
    if admin_key_file:
        try:
            if admin_key_file.is_file():
                key = read_admin_key(admin_key_file)
            else:
                key = create_admin_key(admin_key_file)
                typer.echo(f"admin key written to {admin_key_file} (mode 600)")
        except AdminKeyError as e:
            fail(str(e))
    access = (f"open to holders of the key in {admin_key_file}" if key else "closed (no --admin-key-file)")
    try:
        shm_warning = dev_shm_warning(repository, replicas)
    except ValueError:   # a config Triton would refuse: its load names it better
        shm_warning = None
    if shm_warning:
        typer.echo(f"warning: {shm_warning}", err=True)
    if replicas > 1:
        return _serve_replicas(repository, replicas, http_port, grpc_port, metrics_port, port_offset, address,
                               key, access)
    try:
        server = TritonServer(repository, http_port or None, grpc_port or None, address, admin_key=key,
                              metrics_port=metrics_port or None)
    except ValueError as e:
        fail(str(e))

    def ready(server: TritonServer) -> None:
        typer.echo(f"serving {repository}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
                   f"metrics {server.metrics_url} (Ctrl-C stops)")
        typer.echo(f"server log: {server.log}")
        typer.echo(f"restricted APIs ({RESTRICTED}): {access}")
    try:
        server.serve_forever(on_ready=ready)
    except (RuntimeError, TimeoutError) as e:  # the server's own log names the cause
        fail(str(e))


def _serve_replicas(repository: Path, replicas: int, http_port: int, grpc_port: int, metrics_port: int,
                    port_offset: int, address: str, key: str | None, access: str) -> None:
    """`aerec serve --replicas N`: every endpoint printed, then the replicas watched until Ctrl-C."""
    from server.admin import RESTRICTED
    from server.replicas import ReplicaSet
    try:
        rs = ReplicaSet(repository, replicas, http_port or None, grpc_port or None, metrics_port or None,
                        port_offset, address, admin_key=key)
    except ValueError as e:
        fail(str(e))

    def ready(rs: ReplicaSet) -> None:
        typer.echo(f"serving {repository} on {replicas} replicas (Ctrl-C stops them all)")
        for i, s in enumerate(rs.servers):
            typer.echo(f"replica {i}: HTTP {s.http_url}, gRPC {s.grpc_url}, metrics {s.metrics_url}, log {s.log}")
        typer.echo(f"clients: aerec recommend --url {','.join(rs.urls('grpc'))}  "
                   f"(HTTP: --url {','.join(rs.urls('http'))} --protocol http)")
        typer.echo(f"restricted APIs ({RESTRICTED}): {access}")

    try:  # a replica's death and restart are logged (WARNING) by the ReplicaSet
        rs.serve_forever(on_ready=ready)
    except (RuntimeError, TimeoutError) as e:  # the servers' own logs name the cause
        fail(str(e))


def reload(
    admin_key_file: Path = typer.Option(..., help="the key file the server was started with"),
    model: list[str] = typer.Option([], help="only these models (repeatable); default all"),
    url: str = typer.Option("127.0.0.1:8001", help="server address; several (replicas) separated by commas"),
    protocol: str = typer.Option("grpc", help="grpc | http"),
):
    """Make a running server (every replica listed) load the newest versions in its repository,
    without dropping requests (after `aerec repository RUN --out` added a version)."""
    from client import RecommenderClient
    from server.admin import AdminKeyError, read_admin_key
    try:
        key = read_admin_key(admin_key_file)
    except AdminKeyError as e:
        fail(str(e))
    try:
        loaded = RecommenderClient(url, protocol, admin_key=key).reload(model or None)
    except Exception as e:  # the server's own message names the problem
        fail(str(e))
    typer.echo(f"reloaded: {', '.join(loaded)}")
