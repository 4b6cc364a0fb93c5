"""The ``hpsv2`` and ``aesthetic`` evaluators: CLIP-based human-preference and aesthetic scores.

* HPSv2 (Wu et al., 2023): an OpenCLIP ViT-H/14 fine-tuned on human choices;
  an image's score for its prompt is the cosine of their embeddings (the
  ``hpsv2`` package's ``score``; papers often print it ×100). The published
  checkpoints (``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt``) are
  open_clip state dicts: ``checkpoint`` reads one from a local path into the
  transformers CLIP of ``model`` (the laion ViT-H/14 it was fine-tuned from).
* LAION aesthetic predictor: a linear or MLP head on unit CLIP ViT-L/14 image
  embeddings, giving a 1-10 rating; ``head`` is the head's file from a local
  path (``sac+logos+ava1-l14-linearMSE.pth`` for the improved predictor).
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field

from prefopt.api import RECIPE_PATH
from prefopt.evaluation import EvalRow, Scores
from prefopt_evaluators.prompt_sets import PromptSetConfig, PromptSetEvaluator, torch_dtype


class HPSv2(PromptSetEvaluator):
    """HPSv2 of the images for their prompts (higher: more preferred), and the win rate over the reference."""

    name = "hpsv2"

    class Config(PromptSetConfig):
        model: str = Field("laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                           description="transformers CLIP (hub id or local dir): HPS weights in transformers "
                                       "format, or the architecture the open_clip checkpoint is read into")
        checkpoint: str | None = Field(None, description="HPS v2 / v2.1 open_clip checkpoint (.pt, local path); "
                                                         "null: model already holds the HPS weights",
                                        json_schema_extra=RECIPE_PATH)
        processor: str | None = Field(None, description="CLIP processor (null: model's)")
        prefix: str = Field("hpsv2", pattern=r"^[A-Za-z0-9_.-]+$", description="metric and file prefix")

    def local_files(self) -> list[str]:
        return [self.config.checkpoint] if self.config.checkpoint else []

    def load_scorer(self, device) -> Any:
        from prefopt_evaluators.reward_models import Clip

        cfg = self.config
        return Clip(cfg.model, cfg.processor, device, torch_dtype(cfg.dtype), open_clip_checkpoint=cfg.checkpoint)

    def score(self, scorer, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        size = self.config.batch_size
        unique = list(dict.fromkeys(row.prompt for row in rows))
        text = {}
        for start in range(0, len(unique), size):
            chunk = unique[start:start + size]
            text.update(zip(chunk, scorer.text_features(chunk)))
        values = []
        for start in range(0, len(rows), size):
            features = scorer.image_features(images[start:start + size])
            values += [float(f @ text[row.prompt]) for f, row in zip(features, rows[start:start + size])]
        return Scores(per_image={"score": values})


class Aesthetic(PromptSetEvaluator):
    """The LAION aesthetic predictor's rating of the images (prompts only choose what is drawn)."""

    name = "aesthetic"

    class Config(PromptSetConfig):
        model: str = Field("openai/clip-vit-large-patch14", description="CLIP ViT-L/14: hub id or local dir")
        head: str = Field(min_length=1, description="the predictor head (.pth or .safetensors, local path)",
                          json_schema_extra=RECIPE_PATH)
        prefix: str = Field("aesthetic", pattern=r"^[A-Za-z0-9_.-]+$", description="metric and file prefix")

    def local_files(self) -> list[str]:
        return [self.config.head]

    def load_scorer(self, device) -> Any:
        from prefopt.errors import DataError
        from prefopt_evaluators.reward_models import AestheticHead, Clip, read_state_dict

        cfg = self.config
        clip = Clip(cfg.model, None, device, torch_dtype(cfg.dtype))
        head = AestheticHead(read_state_dict(cfg.head)).to(device).eval()
        width = clip.model.config.projection_dim
        if head.in_features != width:
            raise DataError(f"aesthetic head {cfg.head} reads {head.in_features}-d embeddings; {cfg.model} gives "
                            f"{width}")
        return clip, head

    def score(self, scorer, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        clip, head = scorer
        size = self.config.batch_size
        values = []
        for start in range(0, len(images), size):
            values += head(clip.image_features(images[start:start + size])).tolist()
        return Scores(per_image={"score": values})
