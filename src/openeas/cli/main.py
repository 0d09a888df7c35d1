"""``openeas``: one command for the pieces of OpenEAS.

``openeas serve`` runs the triton processor (``openeas-server``) with tritonserver's flags;
the platform commands (object store, services, gateway) join it as they land.
"""

from __future__ import annotations

import click

from openeas import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="openeas")
def main() -> None:
    """OpenEAS: an open Elastic Algorithm Service with a Triton-compatible processor."""


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("flags", nargs=-1, type=click.UNPROCESSED)
def serve(flags: tuple[str, ...]) -> None:
    """Run the triton processor; FLAGS are tritonserver's (see `openeas serve --help`)."""
    from openeas.server.cli import main as server_main

    server_main(list(flags))


if __name__ == "__main__":
    main()
