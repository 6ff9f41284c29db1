"""`aerec serve` (the embedded Triton server on a model repository) and `aerec reload` (a running
server loads the newest versions, with the admin key)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import fail


def serve(
    repository: Path = typer.Option(Path("model_repository"), "--repository"),
    http_port: int = typer.Option(8000), grpc_port: int = typer.Option(8001),
    address: str = typer.Option("127.0.0.1", help="bind address; loopback unless you ask"),
    admin_key_file: Optional[Path] = typer.Option(
        None, help="enable model load/unload (e.g. `aerec reload`) for holders of the key in this file "
                   "(created, mode 600, if missing); without it nobody can change what is served"),
):
    """Run the embedded Triton server on REPOSITORY until Ctrl-C."""
    from server.admin import RESTRICTED, AdminKeyError, create_admin_key, read_admin_key
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
    try:
        server = TritonServer(repository, http_port, grpc_port, address, admin_key=key)
    except ValueError as e:
        fail(str(e))

    def ready(server: TritonServer) -> None:
        typer.echo(f"serving {repository}: HTTP {server.http_url}, gRPC {server.grpc_url} (Ctrl-C stops)")
        typer.echo(f"server log: {server.log}")
        typer.echo(f"restricted APIs ({RESTRICTED}): "
                   + (f"open to holders of the key in {admin_key_file}" if key else "closed (no --admin-key-file)"))
    try:
        server.serve_forever(on_ready=ready)
    except (RuntimeError, TimeoutError) as e:  # the server's own log names the cause
        fail(str(e))


def reload(
    admin_key_file: Path = typer.Option(..., help="the key file the server was started with"),
    model: list[str] = typer.Option([], help="only these models (repeatable); default all"),
    url: str = typer.Option("127.0.0.1:8001", help="server address"),
    protocol: str = typer.Option("grpc", help="grpc | http"),
):
    """Make a running server load the newest versions in its repository, without dropping requests
    (after `aerec repository RUN --out` added a version)."""
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
