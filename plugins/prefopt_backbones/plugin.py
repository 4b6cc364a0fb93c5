"""Entry point of prefopt's first-party backbones."""

from prefopt.hookspecs import hookimpl


@hookimpl
def prefopt_backbones():
    return []
