"""The ``toy2d`` backbone: a DDPM ε-prediction MLP over 2D points (paper Sec. 4.1).

Prompts are condition ids written as text ("0" .. "K-1"), so the toy runs
through exactly the same engine, pair builder and objectives as text-to-image
backbones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pydantic import Field

from prefopt.errors import DataError
from prefopt.interfaces import REFERENCE, STUDENT, Backbone, PluginConfig, Runtime


class Toy2DBackbone(Backbone):
    """Conditional MLP denoiser over 2D points with a diffusers DDPM scheduler."""

    name = "toy2d"
    data_space = "points"

    class Config(PluginConfig):
        pretrained: str | None = Field(
            None, description="directory saved by this backbone (None: random init from the fields below)"
        )
        num_conditions: int = Field(8, ge=2)
        hidden: int = Field(128, ge=8)
        layers: int = Field(3, ge=1)
        num_train_timesteps: int = Field(1000, ge=10)
        beta_schedule: str = Field("squaredcos_cap_v2", description="diffusers DDPMScheduler beta_schedule")
        sample_steps: int = Field(100, ge=1, description="ancestral DDPM steps when sampling")

    def __init__(self, config=None):
        super().__init__(config)
        self.runtime: Runtime | None = None

    # -- loading -----------------------------------------------------------------
    def load(self, runtime: Runtime, policies: dict[str, str] | None = None) -> None:
        from diffusers import DDPMScheduler

        from prefopt_backbones.loading import frozen_copy
        from prefopt_backbones.toy2d_model import ToyDenoiser

        cfg = self.config
        self.runtime = runtime
        if cfg.pretrained:
            if not Path(cfg.pretrained, "denoiser").is_dir():
                raise DataError(f"backbone.pretrained: {cfg.pretrained} holds no toy2d model (no denoiser/)")
            model = ToyDenoiser.from_pretrained(cfg.pretrained, subfolder="denoiser")
            self.scheduler = DDPMScheduler.from_pretrained(cfg.pretrained, subfolder="scheduler")
        else:
            model = ToyDenoiser(num_conditions=cfg.num_conditions, hidden=cfg.hidden, layers=cfg.layers)
            self.scheduler = DDPMScheduler(
                num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                prediction_type="epsilon", clip_sample=False,
            )
        if model.config.num_conditions != cfg.num_conditions:
            raise DataError(
                f"backbone.num_conditions is {cfg.num_conditions} but {cfg.pretrained} was trained "
                f"with {model.config.num_conditions}"
            )
        model.to(runtime.device)
        # Full fine-tuning: the reference is a frozen copy of the starting weights.
        self.reference = frozen_copy(model)
        self.policies = {
            name: ToyDenoiser.from_pretrained(path, subfolder="denoiser").to(runtime.device).requires_grad_(False).eval()
            for name, path in (policies or {}).items()
        }
        self.student = model.train()

    def data_signature(self) -> dict[str, Any]:
        return {"family": "toy2d", "data_shape": [2], "num_conditions": self.config.num_conditions}

    def trainable_module(self):
        return self.student

    def set_trainable_module(self, module) -> None:
        self.student = module

    def adopt_student_state(self, state_dict) -> None:
        """The gathered weights of a sharded student into a plain copy of the architecture."""
        from prefopt_backbones.loading import frozen_copy

        student = frozen_copy(self.reference)
        student.load_state_dict(state_dict)
        self.student = student.requires_grad_(True).train()

    # -- conditioning ------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]):
        import torch

        conditions = []
        for prompt in prompts:
            try:
                value = int(prompt)
            except ValueError:
                value = -1
            if not 0 <= value < self.config.num_conditions:
                raise DataError(f"toy2d prompts are condition ids 0..{self.config.num_conditions - 1}, got {prompt!r}")
            conditions.append(value)
        return {"condition": torch.tensor(conditions, dtype=torch.long, device=self.runtime.device)}

    def encode_data(self, items: Sequence[Any]):
        import torch

        return torch.as_tensor([list(map(float, item)) for item in items], dtype=torch.float32)

    # -- forward process (DDPM, ε-prediction) -----------------------------------------
    def sample_timesteps(self, n: int, generator):
        import torch

        return torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=generator)

    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def t_fraction(self, t):
        # DDPM timesteps run 0 .. T-1, so t/(T-1) spans [0, 1] (as the `sd` backbone does).
        return t.float() / (self.scheduler.config.num_train_timesteps - 1)

    def add_noise(self, x0, noise, t):
        return self.scheduler.add_noise(x0, noise, t)

    def regression_target(self, x0, noise, t):
        return noise

    def _model(self, source: str):
        if source == STUDENT:
            return self.student
        if source == REFERENCE:
            return self.reference
        if source not in self.policies:
            raise DataError(f"toy2d: no policy {source!r} was loaded (have: {', '.join(self.policies) or 'none'})")
        return self.policies[source]

    def predict(self, x_t, t, cond, source: str):
        return self._model(source)(x_t, t, cond["condition"])

    # -- sampling and saving ------------------------------------------------------------
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], source: str = REFERENCE):
        """Ancestral DDPM sampling; each row's noise comes from its own seed."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        model = self._model(source)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        cond = self.encode_prompts(prompts)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(self.config.sample_steps)
        x = randn_tensor((len(prompts), 2), generator=generators, device=self.runtime.device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for t in scheduler.timesteps:
                eps = model(x, t.expand(len(prompts)).to(x.device), cond["condition"])
                x = scheduler.step(eps, t, x, generator=generators).prev_sample
        model.train(was_training)
        return x

    def save(self, directory: str) -> None:
        from accelerate.utils import extract_model_from_parallel

        extract_model_from_parallel(self.student).save_pretrained(Path(directory) / "denoiser")
        self.scheduler.save_pretrained(Path(directory) / "scheduler")

    def load_trained(self, directory: str) -> None:
        from prefopt_backbones.toy2d_model import ToyDenoiser

        trained = ToyDenoiser.from_pretrained(directory, subfolder="denoiser")
        self.student.load_state_dict(trained.state_dict())
