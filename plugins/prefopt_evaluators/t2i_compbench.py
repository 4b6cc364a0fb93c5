"""The ``t2i_compbench`` evaluator: T2I-CompBench's attribute binding (colour, shape, texture) by BLIP-VQA,
and its 2D spatial part by an object detector (``part: spatial``).

T2I-CompBench (Huang et al., 2023) asks BLIP-VQA one question per noun
phrase of the prompt ("a green bench?", "a red car?") and scores an image by
the product of the probabilities of "yes". The benchmark finds noun phrases
with spaCy's noun chunks; its attribute-binding prompts join "a/an ADJ NOUN"
phrases with "and" and commas, which is where this evaluator splits them
(``phrases`` in the results file shows what was asked). Prompt files from the
user (the benchmark's ``color_val.txt``, ``shape_val.txt``, ``texture_val.txt``).

Its CLIPScore part (non-spatial prompts) is the ``clip_score`` evaluator with
CLIP ViT-B/32 and ``scale: 1`` (the plain cosine).

Its spatial part (``spatial_val.txt``: "a cat on the left of a dog") scores
each image by :mod:`prefopt_evaluators.compbench_spatial`'s restatement of the
benchmark's rule on the detections of the ``geneval`` evaluator's detector
(Mask2Former, COCO classes) in place of the benchmark's UniDet, whose class
list is larger: prompts naming an object the detector has no class for are
refused, or left out with ``unknown_objects: skip``. A benchmark with its own
detector subclasses :class:`T2ICompBench` and overrides ``detector_labels``
and ``load_scorer`` (any object with ``detect(images)`` giving
``geneval_rules.Detection`` lists), as ``digits_geneval`` does for GenEval.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, Sequence

from pydantic import Field, field_validator

from prefopt.api import RECIPE_PATH
from prefopt.errors import DataError
from prefopt.evaluation import EvalRow, Scores, seeded_rows
from prefopt_evaluators.compbench_spatial import judge_spatial, parse_spatial
from prefopt_evaluators.prompt_sets import PromptSetConfig, PromptSetEvaluator, torch_dtype

log = logging.getLogger(__name__)

SEPARATORS = re.compile(r",|\band\b|\bwith\b|;")
# Phrases the benchmark drops from its questions.
SKIPPED = {"top", "the side", "the left", "the right"}


def noun_phrases(prompt: str) -> list[str]:
    """The phrases asked about: the prompt split at commas, "and", "with" and semicolons."""
    parts = [" ".join(part.split()).strip(" .") for part in SEPARATORS.split(prompt)]
    return [part for part in parts if part and part not in SKIPPED]


class T2ICompBench(PromptSetEvaluator):
    """A T2I-CompBench part: BLIP-VQA attribute binding (metric ``vqa``), or the 2D spatial score (``spatial``).

    Attribute binding: per image the product of P(yes) over its noun phrases.
    Spatial: per image the benchmark's 0..1 score of the two objects' detections
    and their boxes; the part's score is the mean over images, as the benchmark's.
    """

    name = "t2i_compbench"

    class Config(PromptSetConfig):
        part: Literal["attribute", "spatial"] = Field(
            "attribute", description="attribute: colour/shape/texture prompts by BLIP-VQA; spatial: 'a <object> "
                                     "<relation> a <object>' prompts by an object detector")
        model: str = Field("Salesforce/blip-vqa-base", description="attribute part: BlipForQuestionAnswering, hub "
                                                                   "id or local dir")
        detector: str = Field("facebook/mask2former-swin-small-coco-instance",
                              description="spatial part: Mask2Former instance segmentation, hub id or local dir")
        detector_size: tuple[int, int] | None = Field(
            (800, 1333), description="spatial part: [shorter, longer] side limits the detector resizes images to "
                                     "(as the geneval evaluator's); null: the processor's own setting")
        object_names: str | None = Field(
            None, description="spatial part: the detector's classes in order, one a line (GenEval's "
                              "object_names.txt for its Mask2Former); null: the detector's own names",
            json_schema_extra=RECIPE_PATH)
        aliases: dict[str, str] = Field(
            default_factory=dict, description="spatial part: prompt word -> detector class (e.g. {sofa: couch}); "
                                              "girl/boy/man/woman -> person is the benchmark's own")
        unknown_objects: Literal["error", "skip"] = Field(
            "error", description="spatial part: a prompt naming an object the detector has no class for: error, "
                                 "or skip the prompt (the count is logged; the score is then over the rest)")
        prefix: str = Field("compbench", pattern=r"^[A-Za-z0-9_.-]+$",
                            description="metric and file prefix, e.g. compbench_color")

        @field_validator("aliases")
        @classmethod
        def _lowercase_words(cls, aliases: dict[str, str]) -> dict[str, str]:
            # Prompt objects are parsed lowercased: a key written "Cat" must still match "cat".
            return {word.lower(): label for word, label in aliases.items()}

    def eval_rows(self) -> list[EvalRow]:
        if self.config.part != "spatial":
            return super().eval_rows()
        # check() and evaluate() both ask: read the files and parse (and warn) once.
        if getattr(self, "_spatial_rows", None) is None:
            self._spatial_rows = self._read_spatial_rows()
        return self._spatial_rows

    def _read_spatial_rows(self) -> list[EvalRow]:
        parsed = [(p, parse_spatial(p, f"{self.name} spatial prompt {i + 1}")) for i, p in enumerate(self.prompts())]
        labels = set(self.detector_labels())
        known = []
        for prompt, spatial in parsed:
            missing = [c for c in spatial.classes(self.config.aliases) if c not in labels]
            if not missing:
                known.append((prompt, None, spatial))
            elif self.config.unknown_objects == "error":
                raise DataError(f"the detector has no class {missing[0]!r} that the spatial prompt {prompt!r} "
                                "names; map it in aliases, or set unknown_objects: skip")
        if len(known) < len(parsed):
            log.warning("%s: %d of %d spatial prompts name an object the detector has no class for; scoring the "
                        "other %d", self.prefix, len(parsed) - len(known), len(parsed), len(known))
        if not known:
            raise DataError(f"the {self.name} evaluator ({self.prefix}) has no spatial prompt whose objects the "
                            "detector knows")
        return seeded_rows(known, self.config.images_per_prompt, self.config.seed)

    def detector_labels(self) -> list[str]:
        """The spatial detector's class names, read without loading its weights."""
        from transformers import AutoConfig

        from prefopt_evaluators.geneval_detector import label_names

        try:
            config = AutoConfig.from_pretrained(self.config.detector)
        except (OSError, ValueError) as exc:  # missing, damaged or not a transformers config
            raise DataError(f"cannot read the spatial detector's config {self.config.detector}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return label_names(config, self.config.object_names)

    def local_files(self) -> list[str]:
        return [self.config.object_names] if self.config.part == "spatial" and self.config.object_names else []

    def load_scorer(self, device) -> Any:
        cfg = self.config
        if cfg.part == "spatial":
            from prefopt_evaluators.geneval_detector import Mask2FormerDetector

            return Mask2FormerDetector(cfg.detector, None, device, cfg.dtype, cfg.object_names, cfg.detector_size)
        from prefopt_evaluators.blip_vqa import BlipVqa

        return BlipVqa(cfg.model, device, torch_dtype(cfg.dtype))

    def score(self, scorer, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        if self.config.part == "spatial":
            return self.score_spatial(scorer, images, rows)
        return self.score_attributes(scorer, images, rows)

    def score_spatial(self, detector, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        values, records = [], []
        size = self.config.batch_size
        for start in range(0, len(rows), size):
            pictures = images[start:start + size]
            for image, row, detections in zip(pictures, rows[start:start + size], detector.detect(pictures)):
                verdict = judge_spatial(row.data, detections, image.size, self.config.aliases)
                values.append(verdict.score)
                records.append({"objects": list(row.data.classes(self.config.aliases)),
                                "relation": row.data.relation, "confidences": verdict.confidences,
                                "position": verdict.position})
        return Scores(per_image={"spatial": values}, records=records)

    def score_attributes(self, scorer, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        questions = [(i, f"{phrase}?") for i, row in enumerate(rows) for phrase in noun_phrases(row.prompt)]
        answers: list[list[float]] = [[] for _ in rows]
        size = self.config.batch_size
        for start in range(0, len(questions), size):
            batch = questions[start:start + size]
            for (i, _), p in zip(batch, scorer.yes_probabilities([images[i] for i, _ in batch], [q for _, q in batch])):
                answers[i].append(p)
        values = []
        for probabilities in answers:
            product = 1.0  # a prompt without a phrase asks nothing and scores 1, as in the benchmark
            for p in probabilities:
                product *= p
            values.append(product)
        records = [{"phrases": noun_phrases(row.prompt), "p_yes": a} for row, a in zip(rows, answers)]
        return Scores(per_image={"vqa": values}, records=records)
