"""Entry point of prefopt's first-party objectives.

The objective modules import torch only inside their methods, so listing them
here keeps ``prefopt validate`` torch-free.
"""

from prefopt.hookspecs import hookimpl
from prefopt_objectives.ddspo import DDSPO
from prefopt_objectives.denoise import Denoise
from prefopt_objectives.diffusion_dpo import DiffusionDPO
from prefopt_objectives.diffusion_kto import DiffusionKTO

PREFOPT_API = 2  # the prefopt.api version these plugins are written for


@hookimpl
def prefopt_objectives():
    return [DDSPO, DiffusionDPO, DiffusionKTO, Denoise]
