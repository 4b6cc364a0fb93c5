"""The rectified-flow forward process shared by the flow-matching backbones (sana, sd3, flux).

x_t = (1 − σ)·x0 + σ·noise; the denoiser predicts the velocity noise − x0.
σ is drawn the way diffusers' flow-matching training scripts (and the official
DDSPO code) draw it: u from a timestep density (diffusers'
``compute_density_for_timestep_sampling``), then the entry ⌊u·T⌋ of the
descending training table of ``FlowMatchEulerDiscreteScheduler`` built from the
model's scheduler config. That table carries the config's static ``shift``
(SD3: 3.0), except when the config asks for dynamic shifting (FLUX.1-dev), in
which case the scheduler, and so every script, leaves it unshifted. SANA's hub
config names its shift ``flow_shift``, which that class does not read: SANA
trains unshifted. ``shift`` overrides the static shift; ``dynamic_shift``
applies the sampler's resolution-dependent shift (μ from the image's token
count) to training too, which those scripts do not.

The timestep handed around is t = σ·T, and ``t_fraction`` is σ.
``loss_weighting`` is diffusers' ``compute_loss_weighting_for_sd3`` of σ.
``precondition_outputs`` is the EDM-style output preconditioning of diffusers'
SD3 scripts and the official DDSPO SD3 run: the prediction becomes
x̂0 = x_t − σ·v̂ and the regression target x0.

No torch at import: heavy modules are imported inside methods.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from prefopt.interfaces import Cond
from prefopt_backbones.diffusers_base import DiffusersBackbone
from prefopt_backbones.settings import DiffusersConfig


TimestepDensity = Literal["uniform", "logit_normal", "mode"]


class FlowMatchingConfig(DiffusersConfig):
    """Forward-process settings every rectified-flow family has."""

    shift: float | None = Field(
        None,
        gt=0,
        description="static training σ shift s: σ → s·σ/(1+(s−1)·σ) (null: as FlowMatchEulerDiscreteScheduler "
        "reads the model's scheduler config, whose table the official and diffusers' scripts index; "
        "1 = unshifted)",
    )
    dynamic_shift: bool = Field(
        False,
        description="resolution-dependent shift of training σ, as the pipelines sample with use_dynamic_shifting: "
        "exponential time shift with μ from the image's token count and the config's base/max shift "
        "(off: diffusers' and the official training scripts do not apply it)",
    )
    timestep_density: TimestepDensity = Field(
        "uniform", description="density of u, as diffusers' compute_density_for_timestep_sampling"
    )
    logit_mean: float = Field(0.0, description="logit_normal density: mean")
    logit_std: float = Field(1.0, gt=0, description="logit_normal density: std")
    mode_scale: float = Field(1.29, description="mode density: scale")
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = Field(
        "none", description="per-sample weight of σ (diffusers' compute_loss_weighting_for_sd3)"
    )
    precondition_outputs: bool = Field(
        False,
        description="EDM-style preconditioning: prediction x_t − σ·v̂, target x0 (diffusers' SD3 scripts, "
        "official DDSPO SD3); off: prediction v̂, target noise − x0",
    )

    @model_validator(mode="after")
    def _one_kind_of_shift(self):
        if self.dynamic_shift and self.shift not in (None, 1.0):
            raise ValueError("shift and dynamic_shift exclude each other: set one of them")
        return self


class FlowMatchingBackbone(DiffusersBackbone):
    """Base of the rectified-flow diffusers backbones (not registered itself).

    A family implements ``_velocity`` (one denoiser call giving the velocity
    noise − x0) and, for dynamic shifting, ``_patch_size``.
    """

    # ------------------------------------------------------------------ family hooks

    def _velocity(self, module, x_t, t, cond: Cond):
        """One denoiser call on (x_t, t, cond) -> the predicted velocity, shaped like x_t."""
        raise NotImplementedError

    def _patch_size(self) -> int:
        """Latent pixels per token side (the image's token count sets the dynamic shift)."""
        return self._config_of(self.denoiser_name).get("patch_size", 1)

    # ------------------------------------------------------------------ forward process

    def _setup_forward_process(self) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        cfg = self.config
        # The class's own defaults fill what the model's config leaves out (or names otherwise).
        model = FlowMatchEulerDiscreteScheduler.from_config(self._scheduler_config).config
        shift = cfg.shift
        if shift is None:  # the table FlowMatchEulerDiscreteScheduler builds from this config
            shift = 1.0 if model.use_dynamic_shifting else model.shift
        self._flow = FlowMatchEulerDiscreteScheduler.from_config(model, shift=shift, use_dynamic_shifting=False)
        self._num_train_timesteps = model.num_train_timesteps
        self._mu = self._dynamic_mu(model) if cfg.dynamic_shift else None

    def num_train_timesteps(self) -> int:
        return self._num_train_timesteps

    def prediction_type(self) -> str:
        # The velocity noise − x0 of rectified flow, or x0 itself once preconditioned (diffusers' "sample").
        return "sample" if self.config.precondition_outputs else "flow"

    def _dynamic_mu(self, model) -> float:
        """μ of the exponential time shift for this resolution, as the pipelines compute it."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        side = self._resolution() // self._downsampling() // self._patch_size()
        return calculate_shift(
            side * side, model.base_image_seq_len, model.max_image_seq_len, model.base_shift, model.max_shift
        )

    def sample_timesteps(self, n: int, generator):
        from diffusers.training_utils import compute_density_for_timestep_sampling

        cfg = self.config
        steps = self._num_train_timesteps
        u = compute_density_for_timestep_sampling(
            weighting_scheme=cfg.timestep_density,
            batch_size=n,
            logit_mean=cfg.logit_mean,
            logit_std=cfg.logit_std,
            mode_scale=cfg.mode_scale,
            device="cpu",
            generator=generator,
        )
        # The scripts index the descending table at ⌊u·T⌋; the clamp only guards
        # u = 1, which the "mode" density can reach.
        index = (u * steps).long().clamp(0, steps - 1)
        t = self._flow.timesteps[index]
        if self._mu is not None:
            t = self._flow.time_shift(self._mu, 1.0, t / steps) * steps
        return t

    def t_fraction(self, t):
        return t.float() / self._num_train_timesteps

    def _sigma(self, t, like):
        """σ of t, shaped to broadcast over ``like``."""
        return self.t_fraction(t).to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0, noise, t):
        sigma = self._sigma(t, x0)
        return (1 - sigma) * x0 + sigma * noise

    def regression_target(self, x0, noise, t):
        return x0 if self.config.precondition_outputs else noise - x0

    def loss_weight(self, t):
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.config.loss_weighting, sigmas=self.t_fraction(t))

    def _forward(self, module, x_t, t, cond: Cond):
        velocity = self._velocity(module, x_t, t, cond)
        if not self.config.precondition_outputs:
            return velocity
        # x_t = x0 + σ·(noise − x0), so x_t − σ·v̂ estimates x0.
        return velocity * -self._sigma(t, velocity) + x_t

    def _describe_process(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "kind": "flow matching (target x0, EDM-preconditioned)"
            if cfg.precondition_outputs
            else "flow matching (target noise - x0)",
            "shift": "from the scheduler config" if cfg.shift is None else cfg.shift,
            "dynamic_shift": cfg.dynamic_shift,
            "timestep_density": cfg.timestep_density,
            "loss_weighting": cfg.loss_weighting,
        }
