"""The ``digits_geneval`` evaluator: GenEval's protocol and rules with the digit world's detector.

The ``geneval`` evaluator's prompt handling, drawing, rules and reports, with
its Mask2Former + CLIP swapped for prefopt_digits.detector (cells -> CNN ->
class, confidence, box, colour from the pixels). The evaluation prompts
default to the set this package ships (``prompt_sets/eval.jsonl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pydantic import Field

from prefopt.api import RECIPE_PATH, DataError
from prefopt.interfaces import PluginConfig
from prefopt_evaluators.geneval import GenEval

PROMPT_SETS = Path(__file__).with_name("prompt_sets")


class DigitDetector:
    """The two methods the GenEval rules need, over the digit detector."""

    def detect(self, images: Sequence[Any]):
        from prefopt_digits import detector

        return detector.detect_batch(images)

    def classify_colours(self, image, detections, label) -> list[str]:
        return [d.color for d in detections]  # the detector names every colour itself


def check_digit_rows(rows: Sequence[dict[str, Any]], source: str) -> None:
    """Every class and colour the rows name must be one the digit detector can report:
    the rules would fail any other without a word, after training."""
    from prefopt_digits.world import CLASSES, COLOURS

    clauses = [c for row in rows for c in [*row["include"], *row.get("exclude", [])]]
    unknown = sorted({c["class"] for c in clauses} - set(CLASSES))
    if unknown:
        raise DataError(f"{source}: the digit detector has no class {unknown[0]!r}; "
                        f"the classes are the digits {', '.join(CLASSES)}")
    colours = sorted({c["color"] for c in clauses if "color" in c} - set(COLOURS))
    if colours:
        raise DataError(f"{source}: the digit world has no colour {colours[0]!r}; "
                        f"its colours are {', '.join(COLOURS)}")


class DigitsGenEval(GenEval):
    """GenEval Overall and per-tag scores on the digit world."""

    name = "digits_geneval"

    class Config(PluginConfig):
        metadata: str | None = Field(None, min_length=1, description="prompt set in GenEval's metadata layout "
                                                                     "(null: the 81 evaluation prompts shipped)",
                                     json_schema_extra=RECIPE_PATH)
        prefix: str = Field("geneval", pattern=r"^[A-Za-z0-9_.-]+$", description="metric and file prefix")
        images_per_prompt: int = Field(4, ge=1, description="images per prompt (GenEval: 4)")
        seed: int = Field(42, description="sampling seed; the same for every method compared")
        num_inference_steps: int | None = Field(None, ge=1, description="sampling steps (null: the backbone's)")
        guidance_scale: float | None = Field(None, ge=0, description="CFG scale (null: the backbone's)")
        prompts_per_tag: int | None = Field(None, ge=1, description="score only the first N prompts of each tag")
        batch_size: int = Field(64, ge=1, description="images per sampling call and per detector call")
        compare_reference: bool = Field(True, description="also score the reference and report the win rate")

    def __init__(self, config=None):
        super().__init__(config)
        if self.config.metadata is None:
            self.config = self.config.model_copy(update={"metadata": str(PROMPT_SETS / "eval.jsonl")})

    def local_files(self) -> list[str]:
        return [self.config.metadata]

    def metadata(self) -> list[dict[str, Any]]:
        rows = super().metadata()
        check_digit_rows(rows, self.config.metadata)
        return rows

    def load_scorer(self, device) -> DigitDetector:
        return DigitDetector()
