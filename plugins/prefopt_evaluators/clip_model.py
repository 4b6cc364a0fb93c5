"""The CLIP model behind the ``clip_score`` evaluator: image and text embeddings, scored by their cosine.

Kept apart from ``clip_score`` because it imports torch at module top, and
``prefopt validate`` imports every evaluator's module to read its Config.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image


def _projected(output) -> torch.Tensor:
    """transformers < 5 returns the projected features; 5 returns an output holding them as pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScorer:
    """Cosine similarity of CLIP image and text embeddings, ×scale and clamped at 0 (torchmetrics' CLIPScore)."""

    def __init__(self, model: str, processor: str | None, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        # fp32 whatever dtype the checkpoint holds: runs are told apart by differences of a fraction of a point.
        self.model = CLIPModel.from_pretrained(model).to(device=device, dtype=torch.float32).eval()
        self.processor = CLIPProcessor.from_pretrained(processor or model)

    @torch.no_grad()
    def _text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        # Truncated to the tokenizer's length (77 for CLIP): a long prompt is scored on its start.
        inputs = self.processor(text=list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        features = _projected(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                           attention_mask=inputs["attention_mask"]))
        return torch.nn.functional.normalize(features, dim=-1)

    @torch.no_grad()
    def _image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        features = _projected(self.model.get_image_features(pixel_values=pixels.to(self.device, torch.float32)))
        return torch.nn.functional.normalize(features, dim=-1)

    def scores(self, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int,
               scale: float) -> list[float]:
        """One score per (image, prompt) row."""
        unique = list(dict.fromkeys(prompts))  # each prompt is embedded once, however many images it has
        text = torch.cat([self._text_features(unique[i:i + batch_size]) for i in range(0, len(unique), batch_size)])
        position = {prompt: i for i, prompt in enumerate(unique)}
        row_text = text[[position[prompt] for prompt in prompts]]
        image = torch.cat([self._image_features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        cosine = (image * row_text).sum(dim=-1)
        return (scale * cosine.clamp(min=0)).cpu().tolist()
