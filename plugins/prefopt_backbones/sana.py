"""SANA backbone: SanaTransformer2DModel, Gemma2 text encoder, AutoencoderDC, flow matching.

No torch at import: heavy modules are imported inside methods.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

from pydantic import Field

from prefopt.interfaces import Cond
from prefopt_backbones.diffusers_base import DiffusersBackbone
from prefopt_backbones.settings import DiffusersConfig


@functools.cache
def _pipeline_instruction() -> list[str]:
    """``SanaPipeline.__call__``'s default ``complex_human_instruction`` (read once: prompts are encoded every step)."""
    import inspect

    from diffusers import SanaPipeline

    return inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default


class SanaBackbone(DiffusersBackbone):
    """SANA (SanaTransformer2DModel + Gemma2 + DC-AE), rectified flow; LoRA reference = adapters off.

    Forward process: x_t = (1−σ)·x0 + σ·noise, regression target noise − x0
    (the transformer predicts that velocity). σ is drawn as diffusers' SANA
    script and the official DDSPO code draw it: u from the timestep density,
    then the unshifted schedule σ = (T − ⌊u·T⌋)/T. A ``shift`` other than 1
    maps σ to shift·σ/(1 + (shift−1)·σ) (the hub scheduler's flow_shift is not
    applied in training by those scripts; here it is a deliberate setting).
    The timestep t handed around is σ·T, and ``t_fraction`` is σ.
    ``loss_weight`` is diffusers' SD3 weighting of σ (none, sigma_sqrt, cosmap).
    """

    name = "sana"
    pipeline_class: ClassVar[str] = "SanaPipeline"
    denoiser_name: ClassVar[str] = "transformer"
    component_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "tokenizer": ("transformers", "AutoTokenizer"),
        "text_encoder": ("transformers", "Gemma2Model"),
        "vae": ("diffusers", "AutoencoderDC"),
        "transformer": ("diffusers", "SanaTransformer2DModel"),
    }
    vae_blocks_key: ClassVar[str] = "encoder_block_out_channels"
    lora_diffusers_format: ClassVar[bool] = False  # diffusers' SANA LoRA script saves peft keys

    class Config(DiffusersConfig):
        pretrained: str = Field(
            "Efficient-Large-Model/Sana_600M_1024px_diffusers",
            min_length=1,
            description="hub id or local diffusers pipeline directory",
        )
        max_sequence_length: int = Field(300, ge=1, description="Gemma2 prompt tokens (SANA: 300)")
        complex_human_instruction: bool = Field(
            False,
            description="prepend SanaPipeline's complex human instruction to prompts (off, as in training scripts)",
        )
        shift: float = Field(1.0, gt=0, description="training σ shift: shift·σ/(1+(shift−1)·σ); 1 = unshifted")
        timestep_density: Literal["uniform", "logit_normal", "mode"] = Field(
            "uniform", description="density of u, as diffusers' compute_density_for_timestep_sampling"
        )
        logit_mean: float = Field(0.0, description="logit_normal density: mean")
        logit_std: float = Field(1.0, gt=0, description="logit_normal density: std")
        mode_scale: float = Field(1.29, description="mode density: scale")
        loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = Field(
            "none", description="per-sample weight of σ (diffusers' compute_loss_weighting_for_sd3)"
        )

    # ------------------------------------------------------------------ family hooks

    def _setup_forward_process(self) -> None:
        self._num_train_timesteps = self._scheduler_config["num_train_timesteps"]

    def _sample_kwargs(self) -> dict[str, Any]:
        # Binning would snap the size to SANA's aspect-ratio table; the data shape must not move.
        return {
            "use_resolution_binning": False,
            "max_sequence_length": self.config.max_sequence_length,
            "complex_human_instruction": self._human_instruction(),
        }

    def _human_instruction(self) -> list[str] | None:
        """SanaPipeline's own instruction text when asked for, else none."""
        return _pipeline_instruction() if self.config.complex_human_instruction else None

    def _vae_latent(self, vae, pixels):
        return vae.encode(pixels).latent

    def _describe_process(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "kind": "flow matching (target noise - x0)",
            "shift": cfg.shift,
            "timestep_density": cfg.timestep_density,
            "loss_weighting": cfg.loss_weighting,
        }

    # ------------------------------------------------------------------ forward process

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
        # The scripts index the descending schedule T, T−1, ..., 1 at ⌊u·T⌋; the
        # clamp only guards u = 1, which the "mode" density can reach.
        index = (u * steps).long().clamp(0, steps - 1)
        sigma = (steps - index).float() / steps
        sigma = cfg.shift * sigma / (1 + (cfg.shift - 1) * sigma)
        return sigma * steps

    def t_fraction(self, t):
        return t.float() / self._num_train_timesteps

    def add_noise(self, x0, noise, t):
        sigma = self.t_fraction(t).to(x0.device, x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return (1 - sigma) * x0 + sigma * noise

    def regression_target(self, x0, noise, t):
        return noise - x0

    def loss_weight(self, t):
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.config.loss_weighting, sigmas=self.t_fraction(t))

    # ------------------------------------------------------------------ prompts and the denoiser

    def encode_prompts(self, prompts) -> Cond:
        embeds, mask, _, _ = self._text_pipeline.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            device=self.runtime.device,
            max_sequence_length=self.config.max_sequence_length,
            complex_human_instruction=self._human_instruction(),
        )
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def _forward(self, module, x_t, t, cond: Cond):
        config = self.modules[self.denoiser_name].config  # module may be wrapped by accelerate
        out = module(
            x_t,
            encoder_hidden_states=cond["encoder_hidden_states"],
            encoder_attention_mask=cond["encoder_attention_mask"],
            timestep=t * config.timestep_scale,
            return_dict=False,
        )[0]
        if config.out_channels == 2 * config.in_channels:  # learned sigma: keep the velocity half, as the pipeline
            out = out.chunk(2, dim=1)[0]
        return out
