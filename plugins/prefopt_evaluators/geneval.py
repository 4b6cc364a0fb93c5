"""The ``geneval`` evaluator: GenEval's prompts, protocol, detector and decision rules.

Images are drawn with the benchmark's protocol by default (4 per prompt, 50
steps, CFG 9.0, seed 42), detected by Mask2Former Swin-S trained on COCO
(transformers), colour-classified by CLIP ViT-L/14 zero-shot on masked crops,
and judged by :mod:`prefopt_evaluators.geneval_rules`. A benchmark with its
own detector subclasses :class:`GenEval` and overrides ``load_scorer`` to
return any object with the two methods of :class:`GenEvalDetector`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Protocol, Sequence

from pydantic import Field

from prefopt.api import RECIPE_PATH
from prefopt.evaluation import EvalRow, ImageEvaluator, Scores, seeded_rows
from prefopt.interfaces import PluginConfig
from prefopt_evaluators.geneval_rules import Detection, judge, read_metadata


class GenEvalDetector(Protocol):
    """What the GenEval rules need from a detector."""

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        """Every detection of each image, any confidence (the rules threshold them)."""

    def classify_colours(self, image: Any, detections: Sequence[Detection], label: str) -> list[str]:
        """One of the rules' COLOURS per detection (not called when detections carry their colour)."""


class GenEval(ImageEvaluator):
    """GenEval score per tag and Overall (the mean of the tag scores), and each image's verdict.

    Metrics: ``<prefix>/overall``, ``<prefix>/<tag>`` per tag, and with
    ``compare_reference`` the reference's and the win rate. Writes
    ``<prefix>_results.jsonl`` to the run directory: per image its prompt,
    seed, tag, verdict (``overall`` 1/0), the reason it failed, and how many
    confident detections of each class it had.
    """

    name = "geneval"

    class Config(PluginConfig):
        metadata: str = Field(min_length=1, description="GenEval's evaluation_metadata.jsonl", json_schema_extra=RECIPE_PATH)
        detector: str = Field("facebook/mask2former-swin-small-coco-instance",
                              description="Mask2Former instance segmentation: hub id or local directory")
        colour_model: str = Field("openai/clip-vit-large-patch14",
                                  description="CLIP that names colours zero-shot: hub id or local directory")
        detector_size: tuple[int, int] | None = Field(
            (800, 1333), description="[shorter, longer] side limits the detector resizes images to, keeping their "
                                     "aspect (GenEval's mmdetection test pipeline: 800, 1333); null: the "
                                     "processor's own setting")
        object_names: str | None = Field(
            None, description="GenEval's object_names.txt (the detector's classes in order, named as the metadata "
                              "names them); null: the detector's own label names", json_schema_extra=RECIPE_PATH)
        prefix: str = Field("geneval", pattern=r"^[A-Za-z0-9_.-]+$", description="metric and file prefix")
        images_per_prompt: int = Field(4, ge=1, description="images per prompt (GenEval: 4)")
        seed: int = Field(42, description="sampling seed (GenEval: 42); the same for every method compared")
        num_inference_steps: int | None = Field(50, ge=1, description="sampling steps (GenEval: 50; null: the "
                                                                      "backbone's)")
        guidance_scale: float | None = Field(9.0, ge=0, description="CFG scale (GenEval: 9.0; null: the backbone's)")
        prompts_per_tag: int | None = Field(None, ge=1, description="score only the first N prompts of each tag "
                                                                   "(a quick check; null: all)")
        batch_size: int = Field(4, ge=1, description="images per sampling call and per detector forward")
        dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="detector and CLIP weights")
        compare_reference: bool = Field(True, description="also score the reference and report the win rate")

    def metadata(self) -> list[dict[str, Any]]:
        rows = read_metadata(self.config.metadata)
        if self.config.prompts_per_tag is None:
            return rows
        taken: Counter = Counter()
        chosen = []
        for row in rows:
            if taken[row["tag"]] < self.config.prompts_per_tag:
                taken[row["tag"]] += 1
                chosen.append(row)
        return chosen

    def eval_rows(self) -> list[EvalRow]:
        items = [(row["prompt"], row["tag"], row) for row in self.metadata()]
        return seeded_rows(items, self.config.images_per_prompt, self.config.seed)

    def local_files(self) -> list[str]:
        return [self.config.object_names] if self.config.object_names else []

    def load_scorer(self, device) -> GenEvalDetector:
        from prefopt_evaluators.geneval_detector import Mask2FormerDetector

        cfg = self.config
        detector = Mask2FormerDetector(cfg.detector, cfg.colour_model, device, cfg.dtype, cfg.object_names,
                                       cfg.detector_size)
        detector.check_classes(self.metadata())
        return detector

    def score(self, scorer: GenEvalDetector, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        correct, records = [], []
        for start in range(0, len(rows), self.config.batch_size):
            batch = range(start, min(start + self.config.batch_size, len(rows)))
            pictures = images[start:batch.stop]
            for i, image, detections in zip(batch, pictures, scorer.detect(pictures)):
                verdict = judge(rows[i].data, detections,
                                lambda chosen, label, image=image: scorer.classify_colours(image, chosen, label))
                correct.append(1.0 if verdict.correct else 0.0)
                records.append({"reason": verdict.reason, "detected": confident_counts(detections, rows[i].group)})
        return Scores(per_image={"overall": correct}, group_metric="overall", records=records)


def confident_counts(detections: Sequence[Detection], tag: str | None) -> dict[str, int]:
    """How many detections of each class the rules kept (for reading the results file)."""
    from prefopt_evaluators.geneval_rules import select_detections

    return {label: len(kept) for label, kept in sorted(select_detections(detections, tag or "").items())}
