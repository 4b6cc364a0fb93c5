"""SANA backbone: SanaTransformer2DModel, Gemma2 text encoder, AutoencoderDC, flow matching.

No torch at import: heavy modules are imported inside methods.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from pydantic import Field

from prefopt.interfaces import Cond
from prefopt_backbones.flow_matching import FlowMatchingBackbone, FlowMatchingConfig


@functools.cache
def _pipeline_instruction() -> list[str]:
    """``SanaPipeline.__call__``'s default ``complex_human_instruction`` (read once: prompts are encoded every step)."""
    import inspect

    from diffusers import SanaPipeline

    return inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default


@functools.cache
def _training_instruction() -> list[str]:
    """The instruction the official DDSPO SANA run encodes training prompts with.

    It is SanaPipeline's text with the last line "User Prompt:" ending without
    the pipeline's trailing space (official ``ddspo/adapters/__init__.py``);
    the pipeline joins the lines and the prompt with no separator, so the one
    space changes the tokens.
    """
    *head, last = _pipeline_instruction()
    return [*head, last.rstrip()]


class SanaBackbone(FlowMatchingBackbone):
    """SANA (SanaTransformer2DModel + Gemma2 + DC-AE), rectified flow; LoRA reference = adapters off.

    The forward process is the flow-matching base's (prefopt_backbones.flow_matching).
    SANA's hub scheduler config names its shift ``flow_shift``, which
    FlowMatchEulerDiscreteScheduler does not read, so training σ is unshifted
    by default, as in diffusers' SANA script and the official DDSPO run.
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

    class Config(FlowMatchingConfig):
        pretrained: str = Field(
            "Efficient-Large-Model/Sana_600M_1024px_diffusers",
            min_length=1,
            description="hub id or local diffusers pipeline directory",
        )
        max_sequence_length: int = Field(300, ge=1, description="Gemma2 prompt tokens (SANA: 300)")
        complex_human_instruction: bool = Field(
            True,
            description="prepend Gemma's complex human instruction to prompts, as the official DDSPO SANA run "
            "does: its text when encoding training prompts, SanaPipeline's own when sampling",
        )

    # ------------------------------------------------------------------ family hooks

    def _sample_kwargs(self) -> dict[str, Any]:
        # Binning would snap the size to SANA's aspect-ratio table; the data shape must not move.
        return {
            "use_resolution_binning": False,
            "max_sequence_length": self.config.max_sequence_length,
            # The official pairs come from the pipeline called with its default instruction.
            "complex_human_instruction": _pipeline_instruction() if self.config.complex_human_instruction else None,
        }

    def _vae_latent(self, vae, pixels):
        return vae.encode(pixels).latent

    # ------------------------------------------------------------------ prompts and the denoiser

    def encode_prompts(self, prompts) -> Cond:
        embeds, mask, _, _ = self._text_pipeline.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            device=self.runtime.device,
            max_sequence_length=self.config.max_sequence_length,
            complex_human_instruction=_training_instruction() if self.config.complex_human_instruction else None,
        )
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def _velocity(self, module, x_t, t, cond: Cond):
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
