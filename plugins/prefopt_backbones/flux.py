"""FLUX.1 backbone: FluxTransformer2DModel, CLIP (pooled) + T5, packed latents, flow matching.

No torch at import: heavy modules are imported inside methods.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from prefopt.errors import PrefoptError
from prefopt.interfaces import REFERENCE, Cond
from prefopt_backbones.flow_matching import FlowMatchingBackbone, FlowMatchingConfig

# FluxPipeline.default_sample_size: the latent side it samples at unless told (1024 px).
DEFAULT_LATENT_SIZE = 128
# Latent pixels per token side: the pipeline packs 2x2 latent patches into one token.
PACK = 2


class FluxBackbone(FlowMatchingBackbone):
    """FLUX.1-dev / schnell (FluxTransformer2DModel + CLIP + T5), rectified flow.

    Data are the VAE's latents, shifted and scaled as FluxPipeline returns them
    before packing: (C, H/8, W/8). The denoiser sees them as the pipeline does:
    packed into 2x2 patches (one token each), with image ids (row, column) per
    token and all-zero text ids, and its output is unpacked back. The condition
    is T5's states plus CLIP's pooled output. FLUX.1-dev is guidance-distilled:
    it takes the guidance value as an input embedding, set by ``guidance``
    (3.5: diffusers' FLUX DreamBooth-LoRA script and FluxPipeline's default);
    schnell has no such embedding and ignores it. The timestep passed in is
    σ (the pipeline's t/1000).

    Training σ follows diffusers' FLUX training scripts by default: FLUX.1-dev's
    scheduler config shifts dynamically, so the table they index is unshifted.
    ``dynamic_shift: true`` trains on the sampler's resolution-dependent shift.

    Full fine-tuning runs here as in the other families (tested on tiny
    models), but the 12B transformer, its float32 copy for the optimizer, the
    Adam moments and the frozen reference do not fit one GPU: shard it with
    FSDP or DeepSpeed ZeRO-3 through accelerate, or train LoRA.
    """

    name = "flux"
    pipeline_class: ClassVar[str] = "FluxPipeline"
    denoiser_name: ClassVar[str] = "transformer"
    component_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "T5EncoderModel"),
        "tokenizer": ("transformers", "AutoTokenizer"),
        "tokenizer_2": ("transformers", "AutoTokenizer"),
        "vae": ("diffusers", "AutoencoderKL"),
        "transformer": ("diffusers", "FluxTransformer2DModel"),
    }
    lora_diffusers_format: ClassVar[bool] = False  # diffusers' FLUX LoRA script saves peft keys

    class Config(FlowMatchingConfig):
        pretrained: str = Field(
            "black-forest-labs/FLUX.1-dev",
            min_length=1,
            description="hub id or local diffusers pipeline directory (FLUX.1-dev or FLUX.1-schnell)",
        )
        guidance: float = Field(
            3.5,
            ge=0,
            description="guidance embedding of the distilled model in training (diffusers' FLUX script: 3.5); "
            "ignored by models without one (schnell)",
        )
        max_sequence_length: int = Field(
            512, ge=1, le=512, description="T5 prompt tokens (diffusers' FLUX script and FluxPipeline: 512)"
        )
        guidance_scale: float = Field(
            3.5,
            ge=0,
            description="sampling: FLUX.1-dev's distilled guidance (FluxPipeline: 3.5), not classifier-free "
            "guidance; schnell ignores it",
        )
        num_inference_steps: int = Field(28, ge=1, description="sampling steps (FluxPipeline: 28; schnell: 4)")

    # ------------------------------------------------------------------ family hooks

    def _pipeline_extras(self) -> dict[str, Any]:
        return {"image_encoder": None, "feature_extractor": None}

    def _sample_kwargs(self) -> dict[str, Any]:
        return {"max_sequence_length": self.config.max_sequence_length}

    def _vae_latent(self, vae, pixels):
        # The posterior mean: encoding an image twice gives the same latent.
        return vae.encode(pixels).latent_dist.mode()

    def _patch_size(self) -> int:
        return PACK * self._config_of(self.denoiser_name).get("patch_size", 1)

    def _resolution(self) -> int:
        # The transformer config has no sample size; the pipeline's default is 128 latent pixels.
        factor = self._downsampling()
        size = self.config.resolution or DEFAULT_LATENT_SIZE * factor
        if size % (factor * PACK):
            raise PrefoptError(
                f"backbone.resolution {size} is not a multiple of {factor * PACK} "
                f"(the VAE's downsampling {factor} x FLUX's 2x2 packing)"
            )
        return size

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["forward_process"]["guidance"] = f"{self.config.guidance} (distilled models; schnell has none)"
        return described

    def sample(self, prompts, seeds, source: str = REFERENCE):
        """x0 as the pipeline samples them, unpacked to (C, H/8, W/8) latents."""
        from diffusers import FluxPipeline

        packed = super().sample(prompts, seeds, source)
        size = self._resolution()
        return FluxPipeline._unpack_latents(packed, size, size, self._downsampling())

    # ------------------------------------------------------------------ prompts and the denoiser

    def encode_prompts(self, prompts) -> Cond:
        embeds, pooled, _ = self._text_pipeline.encode_prompt(
            list(prompts), prompt_2=None, device=self.runtime.device,
            max_sequence_length=self.config.max_sequence_length,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def _velocity(self, module, x_t, t, cond: Cond):
        import torch
        from diffusers import FluxPipeline

        batch, channels, height, width = x_t.shape
        embeds = cond["encoder_hidden_states"]
        config = self.modules[self.denoiser_name].config  # module may be wrapped by accelerate
        guidance = None
        if config.guidance_embeds:
            guidance = torch.full((batch,), self.config.guidance, device=x_t.device, dtype=torch.float32)
        out = module(
            hidden_states=FluxPipeline._pack_latents(x_t, batch, channels, height, width),
            timestep=self.t_fraction(t).to(x_t.dtype),  # σ = t/1000, as the pipeline passes it
            guidance=guidance,
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
            img_ids=FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, x_t.device, x_t.dtype),
            return_dict=False,
        )[0]
        # Sizes in latent pixels (a scale factor of 1): the tokens go back to (C, H, W).
        return FluxPipeline._unpack_latents(out, height, width, 1)
