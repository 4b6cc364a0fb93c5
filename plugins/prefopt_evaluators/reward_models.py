"""The heavy half of the CLIP-based scorers (``aesthetic``, ``hpsv2``): transformers CLIP plus their heads.

Kept apart from the evaluator modules because it imports torch at module top,
and ``prefopt validate`` imports every evaluator's module to read its Config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from prefopt.errors import DataError


def _projected(output) -> torch.Tensor:
    """transformers < 5 returns the projected features; 5 returns an output holding them as pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors (.safetensors, or a torch file read without unpickling code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is no checkpoint
        raise DataError(f"{path} is not a readable checkpoint: {type(exc).__name__}: {str(exc)[:200]}") from None
    for key in ("state_dict", "model"):  # training scripts wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise DataError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


class Clip:
    """A transformers CLIP in eval mode with its processor: unit image and text embeddings."""

    def __init__(self, model: str, processor: str | None, device: torch.device, dtype: torch.dtype,
                 open_clip_checkpoint: str | None = None):
        from transformers import CLIPModel, CLIPProcessor

        self.device, self.dtype = device, dtype
        self.model = CLIPModel.from_pretrained(model, dtype=dtype)
        if open_clip_checkpoint is not None:
            converted = open_clip_to_transformers(read_state_dict(open_clip_checkpoint))
            try:
                missing, unexpected = self.model.load_state_dict(converted, strict=False)
            except RuntimeError as exc:  # a weight of another shape
                raise DataError(f"{open_clip_checkpoint} does not fit the CLIP of {model}: "
                                f"{str(exc).splitlines()[-1].strip()[:200]}") from None
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing or unexpected:
                raise DataError(f"{open_clip_checkpoint} does not fit the CLIP of {model}: "
                                f"{len(missing)} weights missing (e.g. {missing[:1]}), "
                                f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
        self.model = self.model.to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(processor or model)

    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        features = _projected(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
        return F.normalize(features.float(), dim=-1)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        # Truncated to the tokenizer's length (77 for CLIP): a long prompt is scored on its start.
        inputs = self.processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = _projected(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                           attention_mask=inputs["attention_mask"]))
        return F.normalize(features.float(), dim=-1)


# ------------------------------------------------------------------ open_clip checkpoints (HPS v2 / v2.1)

_BLOCK = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+?)[._](weight|bias)$")  # in_proj_weight: "_"


def open_clip_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip ViT CLIP state dict (OpenAI layout, as HPS v2 ships) under transformers' CLIPModel names.

    open_clip packs each attention's q, k, v into one ``in_proj`` and stores
    the projections as (width, embed) matrices; transformers keeps q, k, v
    apart and its projections as (embed, width) Linear weights.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.T.contiguous()
        elif key == "attn_mask":
            continue  # the causal mask, a buffer transformers builds itself
        elif match := _RESBLOCK.match(key):
            visual, index, part, kind = match.groups()
            prefix = f"{'vision_model' if visual else 'text_model'}.encoder.layers.{index}."
            if part == "attn.in_proj":
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = chunk.contiguous()
            elif part in _BLOCK:
                out[f"{prefix}{_BLOCK[part]}.{kind}"] = value
            else:
                raise DataError(f"unexpected open_clip weight {key!r}; only ViT CLIP checkpoints are read")
        else:
            raise DataError(f"unexpected open_clip weight {key!r}; only ViT CLIP checkpoints are read")
    return out


# ------------------------------------------------------------------ LAION aesthetic predictor heads

class AestheticHead(torch.nn.Module):
    """The LAION aesthetic predictor's head on unit CLIP image embeddings.

    Either one Linear (``weight``, ``bias``: the first predictor) or the
    improved predictor's chain ``layers.{0,2,4,6,7}`` of Linear layers, whose
    dropouts are identities at inference and which has no activations.
    """

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        if set(state) == {"weight", "bias"}:
            state = {"layers.0.weight": state["weight"], "layers.0.bias": state["bias"]}
        indices = sorted({int(k.split(".")[1]) for k in state if re.match(r"^layers\.\d+\.weight$", k)})
        if not indices or any(f"layers.{i}.bias" not in state for i in indices):
            raise DataError("an aesthetic head needs Linear weights `weight`/`bias` or `layers.N.weight`/`.bias`")
        self.linears = torch.nn.ModuleList()
        for i in indices:
            weight = state[f"layers.{i}.weight"]
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
            linear.load_state_dict({"weight": weight, "bias": state[f"layers.{i}.bias"]})
            self.linears.append(linear)
        if self.linears[-1].out_features != 1:
            raise DataError("an aesthetic head must end in one output")

    @property
    def in_features(self) -> int:
        return self.linears[0].in_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        for linear in self.linears:
            embeddings = linear(embeddings)
        return embeddings[:, 0]
