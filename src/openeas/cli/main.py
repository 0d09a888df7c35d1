"""``openeas``: one command for the pieces of OpenEAS.

``serve`` runs the triton processor (``openeas-server``), ``up``/``down``/``status`` the
platform (control plane, gateway, local runtime), ``gateway`` one more gateway, ``cp``/``ls`` talk to the object store, ``models``
fetches example models, and ``eas`` is ``eascmd``.
"""

from __future__ import annotations

import importlib

import click

from openeas import __version__

#: Subcommands defined in other modules: name -> (module, attribute).  They are imported
#: only when used, so `openeas cp` does not pay for the platform client's imports.
_LAZY_COMMANDS = {
    "cp": ("openeas.cli.storage", "cp"),
    "ls": ("openeas.cli.storage", "ls"),
    "models": ("openeas.cli.models", "models"),
    "up": ("openeas.cli.platform", "up"),
    "down": ("openeas.cli.platform", "down"),
    "status": ("openeas.cli.platform", "status"),
    "gateway": ("openeas.cli.gateway", "gateway"),
    "eas": ("openeas.cli.eascmd", "main"),
}


class _LazyGroup(click.Group):
    """A group whose commands from :data:`_LAZY_COMMANDS` load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS and cmd_name not in self.commands:
            module, attribute = _LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, name=cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
