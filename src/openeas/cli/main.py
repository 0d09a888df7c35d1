"""``openeas``: one command for the pieces of OpenEAS.

``serve`` runs the triton processor (``openeas-server``), ``up``/``down`` the platform
(control plane, gateway, local runtime), ``cp``/``ls`` talk to the object store, ``models``
fetches example models, and ``eas`` is ``eascmd``.
"""

from __future__ import annotations

import click

from openeas import __version__
from openeas.cli import eascmd
from openeas.cli import models as models_cli
from openeas.cli import platform as platform_cli
from openeas.cli import storage as storage_cli


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


main.add_command(storage_cli.cp)
main.add_command(storage_cli.ls)
main.add_command(models_cli.models)
main.add_command(platform_cli.up)
main.add_command(platform_cli.down)
main.add_command(eascmd.main, name="eas")


if __name__ == "__main__":
    main()
