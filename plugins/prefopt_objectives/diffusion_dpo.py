"""Diffusion-DPO (Wallace et al., 2024; DDSPO paper Eq. 4)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from prefopt.interfaces import LossOutput, Objective, ObjectiveInputs
from prefopt_objectives.prompt_rewrites import PromptDropout, RandomCondition, RandomConditionConfig, check_one_rewrite
from prefopt_objectives.shared_settings import NoiseAndDropout
from prefopt_objectives.predictions import REF_L_NEG, STUDENT_AND_REF, target_errors


class DiffusionDPO(Objective):
    """Diffusion-DPO (Eq. 4): prefer the winner image over the loser, against the backbone's target.

    Both images are regressed onto the backbone's target (ε, v or flow
    velocity) from the pair's shared noise; the logit is −β/2 · Δ. With
    ``random_condition`` (the official DDSPO code's Diffusion-DPO baseline
    with ``--rand_cond``), a pair swapped to an extra prompt c_e takes DDSPO's
    targets instead (Eq. 7: the reference on c_e and on its variant c_e-).
    """

    name = "diffusion_dpo"

    class Config(NoiseAndDropout):
        beta: float = Field(
            5000.0, gt=0, description="β in the logit −β/2·Δ (published SD1.5/SDXL: 5000; Eq. 4's β is half)"
        )
        loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
            "sigmoid", description="sigmoid (DPO), hinge, or ipo: (−Δ/2 − 1/(2β))²"
        )
        weighting: Literal["none", "linear"] = Field(
            "none",
            description="per-pair loss weight over t: none (1) or linear (t_fraction; the official DDSPO code's "
            "--loss_weighting, which weights its Diffusion-DPO baseline too)",
        )
        random_condition: RandomConditionConfig | None = Field(
            None,
            description="random-condition removal (official DDSPO --rand_cond without --cpp): with p(t) a pair "
            "trains on an extra prompt with DDSPO's targets (null: off)",
        )

        @model_validator(mode="after")
        def _one_rewrite(self):
            check_one_rewrite(self.random_condition, self.prompt_dropout)
            return self

    def predictions(self):
        if self.config.random_condition is not None:
            return (*STUDENT_AND_REF, REF_L_NEG)
        return STUDENT_AND_REF

    def independent_noise(self) -> bool:
        return self.config.noise == "independent"

    def prompt_rewrite(self, train_prompts: set[str]):
        if self.config.random_condition is not None:
            return RandomCondition(self.config.random_condition, train_prompts)
        if self.config.prompt_dropout > 0:
            return PromptDropout(self.config.prompt_dropout)
        return None

    def loss(self, inputs: ObjectiveInputs) -> LossOutput:
        from prefopt_objectives import losses
        from prefopt_objectives.predictions import REF_L, REF_W, STUDENT_L, STUDENT_W

        raw = target_errors(inputs)
        swapped = inputs.swapped if self.config.random_condition is not None else None
        if swapped is not None:
            p = inputs.predictions
            swapped_terms = losses.ddspo_terms(student_w=p[STUDENT_W], student_l=p[STUDENT_L], ref_w=p[REF_W],
                                               ref_l=p[REF_L], loser_target=p[REF_L_NEG])
            raw = raw.where(swapped, swapped_terms)
        delta = raw.scaled(inputs.weight).delta()
        per_pair = losses.preference_loss(delta, self.config.beta, self.config.loss_type)
        loss = (per_pair * losses.t_weight(inputs.t_fraction, self.config.weighting)).mean()
        metrics = losses.preference_metrics(loss, raw, delta, self.config.beta)
        if swapped is not None:
            metrics["rand_cond/swapped"] = float(swapped.float().mean())
        return LossOutput(loss, metrics)
