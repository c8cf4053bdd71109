"""The ``hetvc`` command line: one click group, one module per sub-command family."""

import sys

import click

from ..errors import HetvcError


class _Group(click.Group):
    """A click group that turns hetvc errors into one line on stderr and an exit code, and
    Ctrl-C that a command does not handle itself into one line and exit status 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HetvcError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("hetvc: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="hetvc")
def main():
    """Multivariate mixed models with location-specific genetic variance components."""


def _register():
    from . import cv as _cv
    from . import fit as _fit
    from . import simulate as _simulate
    from . import study as _study

    for module in (_fit, _simulate, _study, _cv):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
