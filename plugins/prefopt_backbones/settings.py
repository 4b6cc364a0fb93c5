"""Settings shared by the diffusers backbones (sd, sdxl, sana): pydantic only, no torch.

Each backbone's ``Config`` extends ``DiffusersConfig`` with its family's
settings; ``prefopt validate`` reads these without importing torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prefopt.interfaces import PluginConfig

# "auto": the engine's weight dtype (Runtime.dtype, from train.mixed_precision)
# for frozen weights, float32 for weights the optimizer updates.
DType = Literal["auto", "float32", "float16", "bfloat16"]


class FinetuneConfig(PluginConfig):
    """What is trained: LoRA adapters on the denoiser, or every denoiser weight."""

    mode: Literal["lora", "full"] = Field(
        "lora",
        description="lora: train adapters, reference = adapters off (one copy of the weights); "
        "full: train every denoiser weight, reference = a frozen copy",
    )
    rank: int = Field(8, ge=1, description="LoRA rank r")
    alpha: float | None = Field(
        None, gt=0, description="LoRA alpha (update scale alpha/r); null: alpha = r, as diffusers' scripts"
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        description="denoiser modules that get LoRA adapters (peft target_modules)",
    )
    init: Literal["gaussian", "kaiming"] = Field(
        "gaussian",
        description="LoRA A init (peft init_lora_weights: 'gaussian' as diffusers' and the official "
        "DDSPO scripts, or peft's default kaiming); B is always 0, so training starts at the reference",
    )


class DiffusersConfig(PluginConfig):
    """Loading, precision, fine-tuning and sampling settings every diffusers family has."""

    pretrained: str = Field(min_length=1, description="hub id or local diffusers pipeline directory")
    revision: str | None = Field(None, min_length=1, description="hub revision (branch, tag or commit)")
    variant: str | None = Field(None, min_length=1, description="weight file variant, e.g. fp16")
    denoiser_dtype: DType = Field(
        "auto", description="denoiser weights (auto: float32 when fully fine-tuned, else the engine's dtype)"
    )
    text_encoder_dtype: DType = Field("auto", description="text encoder weights (auto: the engine's dtype)")
    vae_dtype: DType = Field("auto", description="autoencoder weights (auto: the engine's dtype)")
    vae_pretrained: str | None = Field(
        None,
        min_length=1,
        description="load the autoencoder from this hub id / directory instead (e.g. a fp16-safe VAE)",
    )
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="LoRA or full fine-tuning")
    gradient_checkpointing: bool = Field(False, description="recompute denoiser activations in backward")
    attention: Literal["sdpa", "xformers"] = Field(
        "sdpa", description="attention kernel: torch SDPA, or xformers (CUDA only, optional extra)"
    )
    resolution: int | None = Field(
        None, ge=8, description="image side in pixels (null: the model's native size)"
    )
    num_inference_steps: int = Field(25, ge=1, description="denoising steps when sampling pairs / eval images")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance scale when sampling (≤1: off)")
    sampler: str | None = Field(
        None,
        min_length=1,
        description="diffusers scheduler class for sampling, e.g. DDIMScheduler "
        "(null: the class in the model's scheduler config, as its pipeline uses)",
    )
    compile_sampling: bool = Field(
        False,
        description="torch.compile the denoiser as one graph for sampling (pairs and eval images); "
        "the first call compiles (40-160 s on a CPU): pays for long builds (docs/performance.md)",
    )


class DDPMConfig(DiffusersConfig):
    """Settings of the ε / v-prediction families trained with a DDPM forward process."""

    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="what the denoiser predicts (null: as the model's scheduler config says)"
    )
    loss_weighting: Literal["none", "min_snr"] = Field(
        "none",
        description="per-sample loss weight of t: none, or Min-SNR-gamma (Hang et al. 2023): "
        "min(SNR, gamma)/SNR for epsilon, min(SNR, gamma)/(SNR + 1) for v_prediction",
    )
    snr_gamma: float = Field(5.0, gt=0, description="gamma of min_snr (the Min-SNR paper's and diffusers' 5)")
    timestep_sampling: Literal["uniform", "linear", "sigmoid"] = Field(
        "uniform",
        description="density of the training step t of T (official DDSPO --timestep_sampling): uniform; "
        "linear ∝ 1 − t/(T−1), more weight on low noise; sigmoid ∝ σ(20·(t/T − 0.7)), on high noise",
    )
