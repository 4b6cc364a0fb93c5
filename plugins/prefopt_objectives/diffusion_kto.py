"""Diffusion-KTO (Li et al., 2024): per-sample desirable / undesirable utilities."""

from __future__ import annotations

from pydantic import Field

from prefopt.interfaces import LossOutput, Objective, ObjectiveInputs
from prefopt_objectives.prompt_rewrites import PromptDropout
from prefopt_objectives.shared_settings import NoiseAndDropout
from prefopt_objectives.predictions import STUDENT_AND_REF, target_errors


class DiffusionKTO(Objective):
    """Diffusion-KTO: each winner is a desirable sample, each loser an undesirable one.

    Per sample g = ref_mse − model_mse against the backbone's target; the loss
    is w_y · (1 − σ(sign_y · β · (g − KL))) with the batch KL estimate as the
    reference point (no pairing inside the loss).
    """

    name = "diffusion_kto"

    class Config(NoiseAndDropout):
        beta: float = Field(1000.0, gt=0, description="β in σ(±β(g − KL)) (published SD1.5: 1000)")
        lambda_desirable: float = Field(1.0, gt=0, description="λ_D: weight of desirable (winner) samples")
        lambda_undesirable: float = Field(1.0, gt=0, description="λ_U: weight of undesirable (loser) samples")

    def predictions(self):
        return STUDENT_AND_REF

    def independent_noise(self) -> bool:
        return self.config.noise == "independent"

    def prompt_rewrite(self, train_prompts: set[str]):
        return PromptDropout(self.config.prompt_dropout) if self.config.prompt_dropout > 0 else None

    def loss(self, inputs: ObjectiveInputs) -> LossOutput:
        import torch

        from prefopt_objectives import losses

        raw = target_errors(inputs)
        weighted = raw.scaled(inputs.weight)
        g_w = weighted.ref_w - weighted.student_w
        g_l = weighted.ref_l - weighted.student_l
        g = torch.cat([g_w, g_l])
        desirable = torch.cat([torch.ones_like(g_w, dtype=torch.bool), torch.zeros_like(g_l, dtype=torch.bool)])
        kl = losses.kto_kl_baseline(g, inputs.reduce_mean)
        cfg = self.config
        loss = losses.kto_loss(g, desirable, kl, cfg.beta, cfg.lambda_desirable, cfg.lambda_undesirable).mean()
        return LossOutput(loss, self._metrics(loss, raw, g_w, g_l, kl))

    @staticmethod
    def _metrics(loss, raw, g_w, g_l, kl) -> dict[str, float]:
        import torch

        from prefopt_objectives import losses

        with torch.no_grad():
            # Δ of the pair, for accuracy and margin comparable with DPO/DDSPO: Δ = g_l − g_w.
            delta = g_l - g_w
            return losses.as_floats(
                {
                    "loss": loss,
                    "kto/kl": kl,
                    "kto/g_desirable": g_w.mean(),
                    "kto/g_undesirable": g_l.mean(),
                    "pref/accuracy": losses.implicit_accuracy(delta),
                    "pref/margin": (-delta).mean(),
                    **losses.error_metrics(raw),
                }
            )
