"""Exponential moving average of the trained weights (diffusers' ``EMAModel``).

Updated after every optimizer step that was taken; registered with accelerate
so each checkpoint holds it and a resume restores it exactly. Validation
samples with the averaged weights, and at the end of training they replace the
student's, so final/ and evaluation use them.
"""

from __future__ import annotations

from contextlib import contextmanager


class TrainedEMA:
    """An EMA of a list of parameters, checkpointed by accelerate."""

    def __init__(self, params, decay: float, accelerator):
        from diffusers.training_utils import EMAModel

        self.params = list(params)
        # diffusers' ramp: decay_t = min(decay, (1 + t) / (10 + t)) (0 at the first step), so early steps average little.
        self.ema = EMAModel(self.params, decay=decay)
        self.ema.to(self.params[0].device)
        accelerator.register_for_checkpointing(self.ema)

    def step(self) -> None:
        self.ema.step(self.params)

    @contextmanager
    def in_place(self):
        """The averaged weights in the parameters for the duration; the trained ones afterwards."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def copy_to_params(self) -> None:
        """Make the averaged weights the parameters' (the end of training)."""
        self.ema.copy_to(self.params)
