"""Entry point of prefopt's first-party pair sources."""

from prefopt.hookspecs import hookimpl


@hookimpl
def prefopt_pair_sources():
    return []
