"""Entry point of prefopt's first-party pair sources.

The class modules import neither torch nor transformers at top level, so
listing them here keeps ``prefopt validate`` light.
"""

from prefopt.hookspecs import hookimpl
from prefopt_pairs.llm_rewrite import LLMRewrite
from prefopt_pairs.pickapic import PickAPic
from prefopt_pairs.random_removal import RandomRemoval
from prefopt_pairs.toy2d import Toy2DNeighbours, Toy2DPoints
from prefopt_pairs.unpaired import NotPaired, RandPositive

PREFOPT_API = 2  # the prefopt.api version these plugins are written for


@hookimpl
def prefopt_pair_sources():
    return [
        RandomRemoval,
        LLMRewrite,
        RandPositive,
        NotPaired,
        PickAPic,
        Toy2DPoints,
        Toy2DNeighbours,
    ]
