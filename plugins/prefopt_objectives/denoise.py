"""Plain denoising loss: pretraining a reference, supervised fine-tuning, DD-CPP policies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prefopt.interfaces import LossOutput, Objective, ObjectiveInputs, PluginConfig
from prefopt_objectives.predictions import STUDENT_L, STUDENT_W


class Denoise(Objective):
    """Plain denoising loss on one side of each pair: mean of weight · ‖target − student(x_t, c)‖².

    The standard diffusion training loss (no reference, no preference). On the
    winners it pretrains the toy reference or fine-tunes on preferred images
    (SFT); on the winners and on the losers of a labelled pair set it trains
    the winning and losing policies that DD-CPP (paper Sec. 3.2) takes its
    targets from, both conditioned on c.
    """

    name = "denoise"

    class Config(PluginConfig):
        side: Literal["winner", "loser"] = Field(
            "winner", description="which image of each pair to fit (loser: a DD-CPP losing policy)"
        )

    def _prediction(self):
        return STUDENT_W if self.config.side == "winner" else STUDENT_L

    def predictions(self):
        return (self._prediction(),)

    def loss(self, inputs: ObjectiveInputs) -> LossOutput:
        from prefopt_objectives import losses

        prediction = self._prediction()
        errors = losses.per_sample_mse(inputs.targets[prediction.latent], inputs.predictions[prediction])
        loss = (errors * inputs.weight).mean()
        return LossOutput(loss, losses.as_floats({"loss": loss, f"mse/student_{prediction.latent}": errors.detach().mean()}))
