"""Plain denoising loss: pretraining a reference, or supervised fine-tuning on winners."""

from __future__ import annotations

from prefopt.interfaces import LossOutput, Objective, ObjectiveInputs, PluginConfig
from prefopt_objectives.slots import STUDENT_W


class Denoise(Objective):
    """Plain denoising loss on the winner: mean of weight · ‖target − student(x_t^w, c)‖².

    The standard diffusion training loss (no reference, no preference): used to
    pretrain the toy reference and for supervised fine-tuning on winners.
    """

    name = "denoise"

    class Config(PluginConfig):
        pass

    def predictions(self):
        return (STUDENT_W,)

    def loss(self, inputs: ObjectiveInputs) -> LossOutput:
        from prefopt_objectives import losses

        errors = losses.per_sample_mse(inputs.targets["w"], inputs.predictions[STUDENT_W])
        loss = (errors * inputs.weight).mean()
        return LossOutput(loss, losses.as_floats({"loss": loss, "mse/student_w": errors.detach().mean()}))
