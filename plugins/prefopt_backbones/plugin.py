"""Entry point of prefopt's first-party backbones."""

from prefopt.hookspecs import hookimpl
from prefopt_backbones.flux import FluxBackbone
from prefopt_backbones.sana import SanaBackbone
from prefopt_backbones.sd import SDBackbone
from prefopt_backbones.sd3 import SD3Backbone
from prefopt_backbones.sdxl import SDXLBackbone
from prefopt_backbones.toy2d import Toy2DBackbone

PREFOPT_API = 2  # the prefopt.api version these plugins are written for


@hookimpl
def prefopt_backbones():
    return [Toy2DBackbone, SDBackbone, SDXLBackbone, SanaBackbone, SD3Backbone, FluxBackbone]
