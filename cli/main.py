"""`aerec`: one entry point for the whole path. Each command parses, calls one library
function and prints; everything it does is importable without it."""
from __future__ import annotations

import logging

import typer

from cli import batch, deploy, evaluate, export, perf, recommend, repository, serve, train

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# In the order a user meets them: build, serve, ask, measure.
for command in (train.train, evaluate.evaluate, export.export, repository.repository, repository.blocklist,
                perf.perf, serve.serve, serve.reload, recommend.recommend, recommend.similar, batch.batch,
                evaluate.results, train.presets):
    app.command()(command)
app.add_typer(deploy.app, name="deploy")


def main():
    """The console script: warnings and errors of the libraries on stderr, then the typer app."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    app()


if __name__ == "__main__":
    main()
