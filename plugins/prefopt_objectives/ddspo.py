"""DDSPO: Direct Diffusion Score Preference Optimization (DDSPO paper Eq. 6 and 7)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from prefopt.api import RECIPE_PATH_OR_HUB_ID
from prefopt.interfaces import LossOutput, Objective, ObjectiveInputs, PluginConfig, Prediction
from prefopt_objectives.prompt_rewrites import RandomCondition, RandomConditionConfig
from prefopt_objectives.predictions import REF_L, REF_L_NEG, REF_W, STUDENT_L, STUDENT_W, PairNoise, noise_field

# DD-CPP's frozen policies, by the source names the backbone loads them under.
POLICY_W = "policy_w"
POLICY_L = "policy_l"
POLICY_W_W = Prediction(POLICY_W, "w", "c")  # ε_w(x_t^w, c): winning target
POLICY_L_L = Prediction(POLICY_L, "l", "c")  # ε_l(x_t^l, c): losing target


class DDSPO(Objective):
    """DDSPO (Eq. 7): per-timestep winning/losing targets from the reference on c and on c-.

    The winner target is ε_ref(x_t^w, c), the loser target ε_ref(x_t^l, c-);
    student and reference are conditioned on c only. With ``winner_policy``
    and ``loser_policy`` (DD-CPP, Eq. 6) the targets come from two frozen
    policies instead, both conditioned on c. The logit is −β/2 · Δ.

    The targets are the reference's plain predictions: the official DDSPO code
    once offered a CFG-combined target (``--guidance_scale``) and removed it at
    its current head as a baseline rather than DDSPO; prefopt follows the head.
    """

    name = "ddspo"

    class Config(PluginConfig):
        beta: float = Field(
            16000.0,
            gt=0,
            description="β in the logit −β/2·Δ (published SD1.x/SDXL: 16000, SANA: 2000; Eq. 7's β is half)",
        )
        loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
            "sigmoid", description="sigmoid (Eq. 7), hinge, or ipo: (−Δ/2 − 1/(2β))²"
        )
        weighting: Literal["none", "linear"] = Field(
            "none",
            description="per-pair loss weight over t: none (1) or linear (t_fraction, as the official SDXL run)",
        )
        winner_policy: str | None = Field(
            None, min_length=1, description="DD-CPP: frozen winning policy (weights path or Hub id); needs "
            "loser_policy", json_schema_extra=RECIPE_PATH_OR_HUB_ID,
        )
        loser_policy: str | None = Field(
            None, min_length=1, description="DD-CPP: frozen losing policy (weights path or Hub id); needs "
            "winner_policy", json_schema_extra=RECIPE_PATH_OR_HUB_ID,
        )
        noise: PairNoise = noise_field()
        random_condition: RandomConditionConfig | None = Field(
            None,
            description="random-condition removal (official --rand_cond): with p(t) a pair trains on an "
            "extra prompt and its degraded variant instead of its own (null: off)",
        )

        @model_validator(mode="after")
        def _both_policies_or_neither(self):
            if (self.winner_policy is None) != (self.loser_policy is None):
                raise ValueError("DD-CPP needs both winner_policy and loser_policy (or neither)")
            return self

    @property
    def uses_policies(self) -> bool:
        return self.config.winner_policy is not None

    def predictions(self):
        if self.uses_policies:
            return (STUDENT_W, STUDENT_L, POLICY_W_W, POLICY_L_L, REF_W, REF_L)
        return (STUDENT_W, STUDENT_L, REF_W, REF_L_NEG, REF_L)

    def policies(self) -> dict[str, str]:
        if self.uses_policies:
            return {POLICY_W: self.config.winner_policy, POLICY_L: self.config.loser_policy}
        return {}

    def independent_noise(self) -> bool:
        return self.config.noise == "independent"

    def prompt_rewrite(self, train_prompts: set[str]):
        # A swapped pair needs nothing else here: every DDSPO target already
        # comes from the reference (or the DD-CPP policies) on the pair's prompts.
        if self.config.random_condition is None:
            return None
        return RandomCondition(self.config.random_condition, train_prompts)

    def loss(self, inputs: ObjectiveInputs) -> LossOutput:
        from prefopt_objectives import losses

        p = inputs.predictions
        if self.uses_policies:
            targets = {"winner_target": p[POLICY_W_W], "loser_target": p[POLICY_L_L]}
        else:
            targets = {"loser_target": p[REF_L_NEG]}
        raw = losses.ddspo_terms(
            student_w=p[STUDENT_W], student_l=p[STUDENT_L], ref_w=p[REF_W], ref_l=p[REF_L], **targets
        )
        delta = raw.scaled(inputs.weight).delta()
        per_pair = losses.preference_loss(delta, self.config.beta, self.config.loss_type)
        # The t weighting scales each pair's loss, not its errors (official DDSPO code).
        loss = (per_pair * losses.t_weight(inputs.t_fraction, self.config.weighting)).mean()
        metrics = losses.preference_metrics(loss, raw, delta, self.config.beta)
        if inputs.swapped is not None:
            metrics["rand_cond/swapped"] = float(inputs.swapped.float().mean())
        return LossOutput(loss, metrics)
