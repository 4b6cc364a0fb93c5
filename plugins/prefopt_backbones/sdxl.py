"""Stable Diffusion XL backbone: two CLIP text encoders, pooled embeddings, time_ids.

No torch at import: heavy modules are imported inside methods.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from prefopt.interfaces import Cond
from prefopt_backbones.sd import SDBackbone
from prefopt_backbones.settings import DDPMConfig, DType


class SDXLBackbone(SDBackbone):
    """Stable Diffusion XL (UNet2DConditionModel + two CLIP encoders), ε or v prediction.

    The forward process is SD's (DDPM). The condition adds SDXL's pooled text
    embedding and micro-conditioning ``time_ids`` = (original size, crop top-left,
    target size) = (res, res, 0, 0, res, res), the values the pipeline uses
    when sampling at that resolution, so training and sampling see the same.
    The VAE stays in float32 by default: SDXL's VAE overflows in float16.
    """

    name = "sdxl"
    pipeline_class: ClassVar[str] = "StableDiffusionXLPipeline"
    component_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
        "tokenizer": ("transformers", "AutoTokenizer"),
        "tokenizer_2": ("transformers", "AutoTokenizer"),
        "vae": ("diffusers", "AutoencoderKL"),
        "unet": ("diffusers", "UNet2DConditionModel"),
    }

    class Config(DDPMConfig):
        pretrained: str = Field(
            "stabilityai/stable-diffusion-xl-base-1.0",
            min_length=1,
            description="hub id or local diffusers pipeline directory",
        )
        vae_dtype: DType = Field(
            "float32", description="autoencoder weights: float32 (SDXL's VAE overflows in float16 unless fp16-fixed)"
        )

    def _pixel_space(self) -> bool:
        return False  # SDXL always has its VAE (its Config has no ``vae`` switch)

    def _pipeline_extras(self) -> dict[str, Any]:
        return {"image_encoder": None, "feature_extractor": None, "add_watermarker": False}

    def encode_prompts(self, prompts) -> Cond:
        import torch

        embeds, _, pooled, _ = self._text_pipeline.encode_prompt(
            list(prompts), device=self.runtime.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        size = self._resolution()
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=embeds.dtype, device=embeds.device)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)}

    def _unet_kwargs(self, cond: Cond) -> dict[str, Any]:
        return {"added_cond_kwargs": {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}}
