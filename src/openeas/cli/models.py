"""``openeas models``: example models in Triton's repository layout (``fetch_models.sh``)."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group()
def models() -> None:
    """Example models (Triton's examples, built locally)."""


@models.command("list")
def list_models() -> None:
    """List the models that `openeas models fetch` can write."""
    from openeas.zoo import MODELS

    for name, description in MODELS.items():
        click.echo(f"{name}\t{description}")


@models.command()
@click.argument("name")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A pretrained model file to use as is instead of building one.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random weights of a built model.",
)
@click.option("--force", is_flag=True, help="Replace DIRECTORY/NAME if it exists.")
def fetch(name: str, directory: Path, source: Path | None, seed: int, force: bool) -> None:
    """Write model NAME into the repository DIRECTORY (as DIRECTORY/NAME)."""
    from openeas.zoo import ZooError
    from openeas.zoo import fetch as fetch_model

    started = time.monotonic()

    def progress(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.1f}s] {message}", err=True)

    directory.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = fetch_model(
            name, directory, source=source, seed=seed, force=force, progress=progress
        )
    except ZooError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(model_dir))
