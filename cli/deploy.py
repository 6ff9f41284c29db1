"""`aerec deploy kubernetes`: a model repository as Kubernetes manifests, a Helm chart and a
KServe InferenceService for NVIDIA's Triton image (docs/deploy.md)."""
from __future__ import annotations

from pathlib import Path

import typer

from cli.common import DEFAULT_REPOSITORY, fail

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Render what runs a repository elsewhere than this machine.")


@app.command()
def kubernetes(
    repository: Path = typer.Option(DEFAULT_REPOSITORY, "--repository", help="built by `aerec repository`"),
    replicas: int = typer.Option(1, help="Triton pods to start with (the autoscaler adds more on queue time)"),
    gpu: bool = typer.Option(False, "--gpu", help="ask each pod for one NVIDIA GPU"),
    out: Path = typer.Option(Path("deploy"), "--out", help="folder for the manifests, helm/aerec/ and kserve/"),
):
    """Write a Deployment of NVIDIA's Triton image reading REPOSITORY from a volume, its Service,
    a HorizontalPodAutoscaler on Triton's queue time per request, the same as a Helm chart, and a
    KServe InferenceService (Triton runtime), and a Grafana dashboard of the recommendation metrics."""
    from server.deploy.kubernetes import DeployError, write_kubernetes
    try:
        paths = write_kubernetes(repository, replicas, gpu, out)
    except DeployError as e:
        fail(str(e))
    for path in paths:
        typer.echo(str(path))
