"""Diffusion-DPO (Wallace et al., 2024; DDSPO paper Eq. 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prefopt.interfaces import LossOutput, Objective, ObjectiveInputs, PluginConfig
from prefopt_objectives.slots import STUDENT_AND_REF, target_errors


class DiffusionDPO(Objective):
    """Diffusion-DPO (Eq. 4): prefer the winner image over the loser, against the backbone's target.

    Both images are regressed onto the backbone's target (ε, v or flow
    velocity) from the pair's shared noise; the logit is −β/2 · Δ.
    """

    name = "diffusion_dpo"

    class Config(PluginConfig):
        beta: float = Field(
            5000.0, gt=0, description="β in the logit −β/2·Δ (published SD1.5/SDXL: 5000; Eq. 4's β is half)"
        )
        loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
            "sigmoid", description="sigmoid (DPO), hinge, or ipo: (−Δ/2 − 1/(2β))²"
        )

    def predictions(self):
        return STUDENT_AND_REF

    def loss(self, inputs: ObjectiveInputs) -> LossOutput:
        from prefopt_objectives import losses

        raw = target_errors(inputs)
        delta = raw.scaled(inputs.weight).delta()
        loss = losses.preference_loss(delta, self.config.beta, self.config.loss_type).mean()
        return LossOutput(loss, losses.preference_metrics(loss, raw, delta, self.config.beta))
