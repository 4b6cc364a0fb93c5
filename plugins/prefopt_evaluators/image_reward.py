"""The ``image_reward`` evaluator: ImageReward (Xu et al., 2023) through its own ``image-reward`` package.

ImageReward is a BLIP fine-tuned on human rankings of text-to-image outputs;
its score of an image for a prompt is standardised over its training data
(0 is the average image; higher is preferred). The package builds the model
from its checkpoint (``ImageReward-v1.0``, or a local .pt file with
``med_config`` beside it for offline use). It needs torchvision.
"""

from __future__ import annotations

from typing import Any, Sequence

from pydantic import Field

from prefopt.api import RECIPE_PATH
from prefopt.evaluation import EvalRow, Scores
from prefopt_evaluators.prompt_sets import PromptSetConfig, PromptSetEvaluator


class ImageReward(PromptSetEvaluator):
    """ImageReward of the images for their prompts, and the win rate over the reference."""

    name = "image_reward"

    class Config(PromptSetConfig):
        model: str = Field("ImageReward-v1.0", description="ImageReward-v1.0 or a local checkpoint (.pt)")
        med_config: str | None = Field(None, description="the BLIP med_config.json (local path; null: downloaded)",
                                       json_schema_extra=RECIPE_PATH)
        download_root: str | None = Field(None, description="where the package keeps downloads (null: its cache)")
        prefix: str = Field("image_reward", pattern=r"^[A-Za-z0-9_.-]+$", description="metric and file prefix")

    def load_scorer(self, device) -> Any:
        from prefopt.errors import require

        package = require("ImageReward", "imagereward")
        cfg = self.config
        return package.load(cfg.model, device=device, download_root=cfg.download_root, med_config=cfg.med_config)

    def score(self, scorer, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        values: list[float] = [0.0] * len(rows)
        by_prompt: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_prompt.setdefault(row.prompt, []).append(i)
        size = self.config.batch_size
        for prompt, members in by_prompt.items():
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                # The package ranks a list of images for one prompt; its rewards come in the list's order.
                _, rewards = scorer.inference_rank(prompt, [images[i] for i in chunk])
                rewards = rewards if isinstance(rewards, list) else [rewards]
                for i, reward in zip(chunk, rewards):
                    values[i] = float(reward)
        return Scores(per_image={"score": values})
