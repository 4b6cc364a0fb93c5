"""Stable Diffusion 1.x / 2.x backbone: UNet, CLIP text encoder, AutoencoderKL, DDPM.

No torch at import: heavy modules are imported inside methods.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from prefopt.errors import PrefoptError
from prefopt.interfaces import STUDENT, Cond
from prefopt_backbones.diffusers_base import DiffusersBackbone
from prefopt_backbones.settings import DDPMConfig


class SDBackbone(DiffusersBackbone):
    """Stable Diffusion 1.x / 2.x (UNet2DConditionModel + CLIP), ε or v prediction, optionally pixel-space.

    Forward process: DDPM, x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise with t uniform over
    the scheduler's num_train_timesteps; the regression target is the noise
    (epsilon) or the velocity √ᾱ_t·noise − √(1−ᾱ_t)·x0 (v_prediction), as the
    scheduler config says unless ``prediction_type`` overrides it.
    ``t_fraction`` is t/(T−1), so the noisiest step is 1 (and DDSPO's linear
    weighting equals the official code's t/(T−1)).

    ``vae: false`` drops the autoencoder: the data are pixels in [-1, 1] and the
    UNet works on them directly (small models trained from scratch).

    ``train_text_encoder: true`` (full fine-tuning only) trains the text encoder
    with the UNet, as one module (prefopt_backbones.text_trained): prompts are
    passed as token ids and encoded inside the trained forward. Only for
    objectives without reference predictions (``denoise``: training from
    scratch), since a frozen reference would read the moving text encoder too.
    final/ holds the trained text encoder; checkpoints hold both modules.
    """

    name = "sd"
    pipeline_class: ClassVar[str] = "StableDiffusionPipeline"
    denoiser_name: ClassVar[str] = "unet"
    component_classes: ClassVar[dict[str, tuple[str, str]]] = {
        "text_encoder": ("transformers", "CLIPTextModel"),
        "tokenizer": ("transformers", "AutoTokenizer"),
        "vae": ("diffusers", "AutoencoderKL"),
        "unet": ("diffusers", "UNet2DConditionModel"),
    }

    class Config(DDPMConfig):
        pretrained: str = Field(
            "CompVis/stable-diffusion-v1-4", min_length=1, description="hub id or local diffusers pipeline directory"
        )
        vae: bool = Field(
            True, description="latent model with an AutoencoderKL; false: pixel-space UNet, data = pixels in [-1, 1]"
        )
        train_text_encoder: bool = Field(
            False, description="full fine-tuning: train the text encoder with the UNet (objectives without "
            "reference predictions, e.g. denoise, as when training from scratch)"
        )

        @model_validator(mode="after")
        def _text_encoder_needs_full(self):
            if self.train_text_encoder and self.finetune.mode != "full":
                raise ValueError("train_text_encoder needs finetune.mode: full (LoRA adapts the UNet only)")
            return self

    # ------------------------------------------------------------------ a trained text encoder

    _joint = None  # the UNet and text encoder as one trained module, with train_text_encoder (set in load)

    def _trains_text_encoder(self) -> bool:
        # SDXL reuses these methods with a Config that has no such switch.
        return bool(getattr(self.config, "train_text_encoder", False))

    def check_sources(self, sources: set[str]) -> None:
        if self._trains_text_encoder() and set(sources) - {STUDENT}:
            raise PrefoptError("backbone.train_text_encoder: this objective asks for reference predictions, "
                               "which would read the trained text encoder too; use it with denoise")

    def load(self, runtime, policies=None) -> None:
        self._joint = None
        super().load(runtime, policies)
        if runtime.train and self._trains_text_encoder():
            self._joint = self._trainable = self._unet_with_text_encoder()

    def _unet_with_text_encoder(self):
        from prefopt_backbones import loading
        from prefopt_backbones.text_trained import UNetWithTextEncoder

        encoder = self.modules["text_encoder"]
        dtype = loading.torch_dtype(self.config.text_encoder_dtype, self.runtime.dtype, trainable=True)
        if loading.input_dtype(encoder) != dtype:  # trained weights in float32 (auto), as the denoiser's
            library, class_name = self.component_classes["text_encoder"]
            encoder = loading.load_model(library, class_name, *self._location("text_encoder"), dtype)
            self.modules["text_encoder"] = encoder = encoder.to(self.runtime.device)
        return UNetWithTextEncoder(self.modules[self.denoiser_name], encoder.requires_grad_(True))

    def trainable_module(self):
        module = super().trainable_module()
        return self._joint if self._joint is not None else module

    def _student(self):
        student = super()._student()
        return student.unet if self._joint is not None else student

    def adopt_student_state(self, state_dict) -> None:
        if self._trains_text_encoder():
            raise PrefoptError("backbone.train_text_encoder cannot be trained sharded (FSDP / ZeRO-3)")
        super().adopt_student_state(state_dict)

    def release_idle(self, sources, text_cached: bool) -> None:
        if self._trains_text_encoder():
            text_cached = False  # the cache holds token ids; the trained text encoder is never idle
        super().release_idle(sources, text_cached)

    def load_trained(self, directory: str) -> None:
        """As the base class; with train_text_encoder also the saved pipeline's text encoder."""
        from pathlib import Path

        trains_text = self._trains_text_encoder()
        # Refused before anything is loaded: the UNet alone would pair with an untrained encoder.
        if trains_text and not (Path(directory) / "text_encoder").is_dir():
            raise PrefoptError(f"{directory} holds no text_encoder/, which backbone.train_text_encoder trained")
        super().load_trained(directory)
        if not trains_text:
            return
        from prefopt_backbones import loading

        library, class_name = self.component_classes["text_encoder"]
        encoder = self.modules["text_encoder"]
        trained = loading.load_model(library, class_name, str(Path(directory)), "text_encoder", None, None,
                                     loading.input_dtype(encoder))
        encoder.load_state_dict(trained.state_dict())

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self._trains_text_encoder():
            described["trained"]["module"] = f"{self.denoiser_name} + text_encoder"
        return described

    # ------------------------------------------------------------------ family hooks

    def _pixel_space(self) -> bool:
        return not self.config.vae

    def _components(self) -> dict[str, tuple[str, str] | None]:
        components: dict[str, tuple[str, str] | None] = dict(self.component_classes)
        if self._pixel_space():
            components["vae"] = None
        return components

    def _scheduler_overrides(self) -> dict[str, Any]:
        if self.config.prediction_type is None:
            return {}
        return {"prediction_type": self.config.prediction_type}

    def _setup_forward_process(self) -> None:
        from diffusers import DDPMScheduler

        self._noise = DDPMScheduler.from_config(self._scheduler_config, **self._scheduler_overrides())
        kind = self._noise.config.prediction_type
        if kind not in ("epsilon", "v_prediction"):
            raise PrefoptError(f"backbone {self.name!r} trains epsilon or v_prediction models, not {kind!r}")
        self._num_train_timesteps = self._noise.config.num_train_timesteps

    def num_train_timesteps(self) -> int:
        return self._num_train_timesteps

    def prediction_type(self) -> str:
        return self._noise.config.prediction_type

    def _pipeline(self, denoiser, scheduler_class: str | None = None):
        pipeline = super()._pipeline(denoiser, scheduler_class)
        if self._pixel_space():
            pipeline.vae_scale_factor = 1  # latents are pixels: no downsampling
        return pipeline

    def _pipeline_extras(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    def _vae_latent(self, vae, pixels):
        # The posterior mean, not a draw: encoding the same image twice (a resumed
        # pair build) gives the same latent. SD's posterior std is tiny anyway.
        return vae.encode(pixels).latent_dist.mode()

    def _describe_process(self) -> dict[str, Any]:
        return {
            "kind": "ddpm",
            "prediction_type": self.config.prediction_type or "from the scheduler config",
            "timesteps": f"{self.config.timestep_sampling} over num_train_timesteps",
            "loss_weighting": self.config.loss_weighting
            + (f" (gamma {self.config.snr_gamma:g})" if self.config.loss_weighting == "min_snr" else ""),
        }

    # ------------------------------------------------------------------ forward process

    def sample_timesteps(self, n: int, generator):
        import torch

        if self.config.timestep_sampling == "uniform":
            return torch.randint(0, self._num_train_timesteps, (n,), generator=generator)
        return torch.multinomial(self._timestep_density(), n, replacement=True, generator=generator)

    def _timestep_density(self):
        """The official DDSPO code's non-uniform densities over t = 0..T−1 (ddspo/data.py, current head)."""
        import torch

        steps = self._num_train_timesteps
        if self.config.timestep_sampling == "linear":
            weights = torch.linspace(1.0, 0.0, steps)
        else:  # sigmoid: steep (20) around 70% of the way to pure noise
            weights = torch.sigmoid(20.0 * (torch.arange(steps) / steps - 0.7))
        return weights / weights.sum()

    def t_fraction(self, t):
        return t.float() / (self._num_train_timesteps - 1)

    def add_noise(self, x0, noise, t):
        return self._noise.add_noise(x0, noise, t)

    def regression_target(self, x0, noise, t):
        if self._noise.config.prediction_type == "v_prediction":
            return self._noise.get_velocity(x0, noise, t)
        return noise

    def loss_weight(self, t):
        """Min-SNR-γ (Hang et al. 2023, Eq. 3 and its v-prediction form): the per-sample
        weight that caps each timestep's share of the loss at SNR γ.

        The x0-space weight min(SNR, γ) becomes min(SNR, γ)/SNR for an ε target and
        min(SNR, γ)/(SNR + 1) for a v target (diffusers' train_text_to_image does the
        same). At SNR = 0 (a zero-terminal-SNR schedule's last step) the ε weight's
        limit is 1.
        """
        import torch

        if self.config.loss_weighting == "none":
            return super().loss_weight(t)
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self._noise, t)
        capped = snr.clamp(max=self.config.snr_gamma)
        if self._noise.config.prediction_type == "v_prediction":
            return capped / (snr + 1)
        return torch.where(snr > 0, capped / snr, torch.ones_like(snr))

    # ------------------------------------------------------------------ prompts and the denoiser

    def encode_prompts(self, prompts) -> Cond:
        if self._joint is not None:  # the trained module encodes: token ids only
            return self._token_ids(prompts)
        embeds, _ = self._text_pipeline.encode_prompt(
            list(prompts), self.runtime.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"encoder_hidden_states": embeds}

    def _token_ids(self, prompts) -> Cond:
        """Token ids (and the mask, where the encoder reads one) as StableDiffusionPipeline.encode_prompt makes them."""
        tokenizer = self.modules["tokenizer"]
        tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        cond = {"input_ids": tokens.input_ids.to(self.runtime.device)}
        if getattr(self.modules["text_encoder"].config, "use_attention_mask", False):
            cond["attention_mask"] = tokens.attention_mask.to(self.runtime.device)
        return cond

    def _unet_kwargs(self, cond: Cond) -> dict[str, Any]:
        """Denoiser keyword arguments besides the text embeddings (SDXL's micro-conditioning)."""
        return {}

    def _forward(self, module, x_t, t, cond: Cond):
        if "input_ids" in cond:  # UNetWithTextEncoder: it encodes the ids itself
            return module(x_t, t, return_dict=False, **cond)[0]
        return module(
            x_t,
            t,
            encoder_hidden_states=cond["encoder_hidden_states"],
            return_dict=False,
            **self._unet_kwargs(cond),
        )[0]
