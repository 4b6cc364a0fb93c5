"""Entry point of prefopt's first-party backbones."""

from prefopt.hookspecs import hookimpl
from prefopt_backbones.toy2d import Toy2DBackbone


@hookimpl
def prefopt_backbones():
    return [Toy2DBackbone]
