"""Entry point of prefopt's first-party evaluators."""

from prefopt.hookspecs import hookimpl
from prefopt_evaluators.clip_score import ClipScore
from prefopt_evaluators.fid import Fid
from prefopt_evaluators.geneval import GenEval
from prefopt_evaluators.image_reward import ImageReward
from prefopt_evaluators.preference_scores import Aesthetic, HPSv2
from prefopt_evaluators.t2i_compbench import T2ICompBench
from prefopt_evaluators.toy2d import Toy2DModes

PREFOPT_API = 2  # the prefopt.api version these plugins are written for


@hookimpl
def prefopt_evaluators():
    return [Toy2DModes, ClipScore, GenEval, HPSv2, Aesthetic, T2ICompBench, Fid, ImageReward]
