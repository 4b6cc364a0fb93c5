"""Stable Diffusion 3 / 3.5 backbone: SD3Transformer2DModel (MMDiT), two CLIP encoders + T5, flow matching.

No torch at import: heavy modules are imported inside methods.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from prefopt.interfaces import Cond
from prefopt_backbones.flow_matching import FlowMatchingBackbone, FlowMatchingConfig, TimestepDensity
from prefopt_backbones.settings import DType, FinetuneConfig

# The official DDSPO SD3 run's LoRA layers (ddspo/adapters/sd3.py): the image and the
# text stream's attention projections of every MMDiT block.
SD3_LORA_TARGETS = [
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
]


class SD3FinetuneConfig(FinetuneConfig):
    """SD3's fine-tuning settings: LoRA on both streams' attention by default."""

    target_modules: list[str] = Field(
        default_factory=lambda: list(SD3_LORA_TARGETS),
        min_length=1,
        description="transformer modules that get LoRA adapters (default: the official DDSPO SD3 run's, "
        "both streams' attention projections)",
    )


class SD3Backbone(FlowMatchingBackbone):
    """SD3 / SD3.5 Medium and Large (SD3Transformer2DModel + 2 CLIP + T5), rectified flow.

    The forward process is the flow-matching base's: the training σ table is
    FlowMatchEulerDiscreteScheduler's from the model's scheduler config (shift
    3.0 for SD3 and SD3.5), as the official DDSPO SD3 run and diffusers' SD3
    scripts index it. The condition is the pipeline's: both CLIP encoders'
    penultimate states side by side, zero-padded to T5's width and followed by
    T5's states, plus the two pooled CLIP projections. ``t5: false`` leaves T5
    out; its states are then zeros, as StableDiffusion3Pipeline makes them
    without ``text_encoder_3`` (a fully fine-tuned pipeline saved so has no T5
    either: load it with ``text_encoder_3=None, tokenizer_3=None``, or pass the
    base model's T5). The VAE's latents are shifted and scaled (shift_factor,
    scaling_factor), as the pipeline returns them.
    """

    name = "sd3"
    pipeline_class: ClassVar[str] = "StableDiffusion3Pipeline"
    denoiser_name: ClassVar[str] = "transformer"
    component_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
        "text_encoder_3": ("transformers", "T5EncoderModel"),
        "tokenizer": ("transformers", "AutoTokenizer"),
        "tokenizer_2": ("transformers", "AutoTokenizer"),
        "tokenizer_3": ("transformers", "AutoTokenizer"),
        "vae": ("diffusers", "AutoencoderKL"),
        "transformer": ("diffusers", "SD3Transformer2DModel"),
    }
    lora_diffusers_format: ClassVar[bool] = False  # diffusers' SD3 LoRA script saves peft keys

    class Config(FlowMatchingConfig):
        pretrained: str = Field(
            "stabilityai/stable-diffusion-3-medium-diffusers",
            min_length=1,
            description="hub id or local diffusers pipeline directory (SD3 / SD3.5 Medium or Large)",
        )
        finetune: SD3FinetuneConfig = Field(default_factory=SD3FinetuneConfig, description="LoRA or full fine-tuning")
        t5: bool = Field(True, description="load the T5 encoder; false: its prompt states are zeros (saves ~9 GB)")
        max_sequence_length: int = Field(
            77, ge=1, description="T5 tokens when encoding training prompts (official DDSPO SD3 run: 77)"
        )
        sampling_max_sequence_length: int = Field(
            256, ge=1, description="T5 tokens when sampling pairs and eval images (StableDiffusion3Pipeline: 256)"
        )
        timestep_density: TimestepDensity = Field(
            "logit_normal", description="density of u (official DDSPO SD3 run: logit_normal)"
        )
        precondition_outputs: bool = Field(
            True,
            description="EDM-style preconditioning: prediction x_t − σ·v̂, target x0 (official DDSPO SD3 run: on)",
        )
        vae_dtype: DType = Field("float32", description="autoencoder weights (official DDSPO SD3: float32)")

    # ------------------------------------------------------------------ family hooks

    def _components(self) -> dict[str, tuple[str, str] | None]:
        components: dict[str, tuple[str, str] | None] = dict(self.component_classes)
        if not self.config.t5:
            components["text_encoder_3"] = components["tokenizer_3"] = None
        return components

    def _pipeline_extras(self) -> dict[str, Any]:
        return {"image_encoder": None, "feature_extractor": None}

    def _sample_kwargs(self) -> dict[str, Any]:
        return {"max_sequence_length": self.config.sampling_max_sequence_length}

    def _vae_latent(self, vae, pixels):
        # The posterior mean: encoding an image twice gives the same latent.
        return vae.encode(pixels).latent_dist.mode()

    # ------------------------------------------------------------------ prompts and the denoiser

    def encode_prompts(self, prompts) -> Cond:
        prompts = list(prompts)
        embeds, _, pooled, _ = self._text_pipeline.encode_prompt(
            prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.runtime.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.config.max_sequence_length,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def _velocity(self, module, x_t, t, cond: Cond):
        return module(
            hidden_states=x_t,
            timestep=t,  # σ·T, as StableDiffusion3Pipeline passes the scheduler's timesteps
            encoder_hidden_states=cond["encoder_hidden_states"],
            pooled_projections=cond["pooled_projections"],
            return_dict=False,
        )[0]
