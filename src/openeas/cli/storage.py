"""``openeas cp`` and ``openeas ls``: put model repositories into object storage."""

from __future__ import annotations

import threading
import time
from typing import Any

import click

from openeas.storage import StorageError, parse_uri
from openeas.storage.transfer import copy, list_objects

#: Transfers at least this large show a progress bar.
PROGRESS_MIN_BYTES = 16 * 1024 * 1024


@click.command("cp")
@click.argument("src")
@click.argument("dst")
@click.option("-r", "--recursive", is_flag=True, help="copy a directory / prefix recursively")
@click.option("-j", "--jobs", default=8, show_default=True, help="parallel transfers")
def cp(src: str, dst: str, recursive: bool, jobs: int) -> None:
    """Copy SRC to DST: a local path to oss://bucket/key (or s3://), or back.

    A directory keeps its name below a DST ending in "/" (a prefix or a bucket root, as
    cp -r does); DIR/ copies its contents (what ossutil cp -r always does).

    \b
    openeas cp -r ./models oss://triton-model-repo/models/   # -> models/models/...
    openeas cp -r ./models/ oss://triton-model-repo/models/  # -> models/...
    openeas cp oss://triton-model-repo/models/m/config.pbtxt ./
    """
    bar: Any = None
    lock = threading.Lock()

    def on_plan(files: int, size: int) -> None:
        nonlocal bar
        if size >= PROGRESS_MIN_BYTES:
            from tqdm import tqdm

            # disable=None: no bar when stderr is not a terminal (logs, CI).
            bar = tqdm(
                total=size, unit="B", unit_scale=True, unit_divisor=1024, leave=False, disable=None
            )

    def progress(n: int) -> None:
        if bar is not None:
            with lock:
                bar.update(n)

    try:
        summary = copy(src, dst, recursive, progress=progress, on_plan=on_plan, threads=jobs)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    speed = summary.bytes / summary.seconds if summary.seconds > 0 else 0.0
    click.echo(
        f"Succeed: Total num: {summary.files}, size: {summary.bytes:,}. "
        f"OK num: {summary.files}({summary.direction} {summary.files} files)."
    )
    click.echo(f"average speed {_human(speed)}/s, {summary.seconds:.3f}(s) elapsed")


@click.command("ls")
@click.argument("uri")
def ls(uri: str) -> None:
    """List the objects below URI (oss://bucket[/prefix], s3://..., or a local path)."""
    try:
        base = parse_uri(uri)
        objects = list_objects(uri)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'LastModifiedTime':<25} {'Size(B)':>12}  {'ETag':<34} ObjectName")
    for info in objects:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.mtime))
        click.echo(f"{stamp + ' UTC':<25} {info.size:>12}  {info.etag:<34} {base.child(info.key)}")
    click.echo(f"\nObject Number is: {len(objects)}")


def _human(rate: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if rate < 1024:
            return f"{rate:.1f}{unit}"
        rate /= 1024
    return f"{rate:.1f}TB"
