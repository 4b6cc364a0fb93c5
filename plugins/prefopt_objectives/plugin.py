"""Entry point of prefopt's first-party objectives."""

from prefopt.hookspecs import hookimpl


@hookimpl
def prefopt_objectives():
    return []
