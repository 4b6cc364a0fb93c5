"""The step the official DDSPO trainer takes, for ``prefopt bench`` to time the fused step against.

KU-MIIL/DDSPO (ddspo/adapters/sd.py, ``training_step``) computes one SD step as:

1. the text encoder on the batch's prompts c and then on its degraded prompts c-,
   every step (no cache, no de-duplication);
2. the reference on [x_t^w ; x_t^l] with [c ; c-]: the DDSPO targets;
3. the student on [x_t^w ; x_t^l] with [c ; c];
4. the reference again on [x_t^w ; x_t^l] with [c ; c]: the reference term.

That is 4 reference rows per pair in two calls, where ``FusedStep`` makes 3 in
one (ε_ref(x_t^w, c) is computed twice above). The noise, timesteps, targets
and the objective's loss are ``FusedStep``'s own, so both steps give the same
loss and gradients (tests/test_bench.py) and differ only in how the
predictions are computed.
"""

from __future__ import annotations

import torch

from prefopt.engine.step import FusedStep, PairBatch, _gather_cond
from prefopt.errors import PrefoptError
from prefopt.interfaces import REFERENCE, STUDENT, Prediction

# What the official calls produce: (source, latent, prompt) of each row block.
_TARGET_CALL = (Prediction(REFERENCE, "w", "c"), Prediction(REFERENCE, "l", "c-"))
_STUDENT_CALL = (Prediction(STUDENT, "w", "c"), Prediction(STUDENT, "l", "c"))
_REFERENCE_CALL = (Prediction(REFERENCE, "w", "c"), Prediction(REFERENCE, "l", "c"))


def naive_step_applies(objective) -> bool:
    """Whether the official step's three calls give every prediction the objective asks for."""
    available = set(_TARGET_CALL) | set(_STUDENT_CALL) | set(_REFERENCE_CALL)
    return set(objective.predictions()) <= available


class NaiveStep(FusedStep):
    """``FusedStep`` with the predictions and prompt encoding done as the official DDSPO code does."""

    def __init__(self, backbone, objective, reference_micro_batch=None, encode=None, rewrite=None):
        if not naive_step_applies(objective):
            raise PrefoptError(f"objective {objective.name!r} asks for predictions the official DDSPO step "
                               "does not make (DD-CPP policies?): no naive step to compare with")
        # The text encoder every step, whatever the recipe's text cache says.
        super().__init__(backbone, objective, reference_micro_batch, encode=None, rewrite=rewrite)

    def __call__(self, *args, **kwargs):
        # The official trainer runs eager: with train.compile, this step bypasses the compiled blocks
        # (its backward then is eager too), so the bench compares against the official step as it runs.
        with torch.compiler.set_stance("force_eager"):
            return super().__call__(*args, **kwargs)

    def _encode_prompts(self, batch: PairBatch):
        """c, then c-, each row encoded (two encoder calls, repeats included)."""
        n = len(batch)
        with torch.no_grad():
            positive = self.encode(list(batch.prompts))
            negative = self.encode(list(batch.degraded))
        cond = {key: torch.cat([positive[key], negative[key]]) for key in positive}
        rows = torch.arange(2 * n)
        return cond, {"c": rows[:n], "c-": rows[n:]}

    def _predict(self, x_t, t, cond, cond_index, n):
        backbone = self.backbone
        x_pair = torch.cat([x_t["w"], x_t["l"]])
        t_pair = t.repeat(2)
        out: dict[Prediction, torch.Tensor] = {}

        def call(source: str, blocks: tuple[Prediction, Prediction]) -> None:
            index = torch.cat([cond_index[p.prompt] for p in blocks])
            pred = backbone.predict(x_pair, t_pair, _gather_cond(cond, index), source)
            for p, chunk in zip(blocks, pred.float().split(n)):
                out[p] = chunk

        with torch.no_grad():
            call(REFERENCE, _TARGET_CALL)
        call(STUDENT, _STUDENT_CALL)
        with torch.no_grad():
            call(REFERENCE, _REFERENCE_CALL)  # ε_ref(x_t^w, c) again, as the official code does
        return {p: out[p] for wanted in self.by_source.values() for p in wanted}
