"""pluggy hook specifications: how a plugin package tells prefopt what it adds.

A plugin package exposes a module with ``@hookimpl`` functions and names it in
the ``prefopt.plugins`` entry-point group of its pyproject::

    [project.entry-points."prefopt.plugins"]
    my_objectives = "my_package.plugin"
"""

import pluggy

PROJECT = "prefopt"
ENTRY_POINT_GROUP = "prefopt.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def prefopt_objectives():
    """Return a list of Objective subclasses."""


@hookspec
def prefopt_backbones():
    """Return a list of Backbone subclasses."""


@hookspec
def prefopt_pair_sources():
    """Return a list of PairSource subclasses."""


@hookspec
def prefopt_evaluators():
    """Return a list of Evaluator subclasses."""
