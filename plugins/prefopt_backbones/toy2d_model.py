"""A conditional MLP denoiser over 2D points, as a diffusers model.

Being a ``ModelMixin``/``ConfigMixin`` gives it ``save_pretrained`` and
``from_pretrained``: a trained toy reference loads through the same path a hub
model does.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


class ToyDenoiser(ModelMixin, ConfigMixin):
    """ε-prediction MLP: (x_t, t, condition) -> ε."""

    @register_to_config
    def __init__(self, num_conditions: int = 8, hidden: int = 128, layers: int = 3, time_dim: int = 32):
        super().__init__()
        self.condition_embedding = nn.Embedding(num_conditions, hidden)
        self.time_projection = nn.Linear(time_dim, hidden)
        self.input_projection = nn.Linear(2, hidden)
        blocks = []
        for _ in range(layers):
            blocks += [nn.SiLU(), nn.Linear(hidden, hidden)]
        self.body = nn.Sequential(*blocks)
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        time = get_timestep_embedding(t.float(), self.config.time_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        h = self.input_projection(x) + self.time_projection(time) + self.condition_embedding(condition)
        return self.output(self.body(h))
