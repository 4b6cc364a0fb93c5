"""Entry point of prefopt's first-party evaluators."""

from prefopt.hookspecs import hookimpl


@hookimpl
def prefopt_evaluators():
    return []
