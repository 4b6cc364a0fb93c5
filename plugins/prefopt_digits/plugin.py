"""Entry point of the digit-scenes benchmark's plugins (a pair source and an evaluator)."""

from prefopt.hookspecs import hookimpl
from prefopt_digits.evaluator import DigitsGenEval
from prefopt_digits.pairs import DigitScenes

PREFOPT_API = 2  # the prefopt.api version these plugins are written for


@hookimpl
def prefopt_pair_sources():
    return [DigitScenes]


@hookimpl
def prefopt_evaluators():
    return [DigitsGenEval]
