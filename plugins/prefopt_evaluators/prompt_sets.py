"""Benchmark prompt sets as evaluator inputs, and the settings every prompt-driven evaluator shares.

Formats read here, beside what ``prefopt.data.prompts`` reads (text, JSONL,
CSV, parquet, datasets):

* ``.tsv``: PartiPrompts' ``PartiPrompts.tsv`` (prompts in the ``Prompt``
  column; set ``column``), or any tab-separated table;
* ``.json``: a list of prompts (the HPSv2 benchmark's per-style files such as
  ``anime.json``), or COCO's captions file (``captions_val2014.json``:
  ``annotations[*].caption``).

The selection settings (``dedupe``, ``min_words``, ``max_count``,
``shuffle_seed``) apply to every format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from prefopt.errors import DataError
from prefopt.evaluation import EvalRow, ImageEvaluator, seeded_rows
from prefopt.interfaces import PluginConfig
from prefopt.recipe import PromptsConfig

def _json(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a number of over 4300 digits, nesting deeper than Python's stack
        raise DataError(f"{path}: not usable JSON ({' '.join(str(exc).split())[:200]})") from None
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        annotations = data["annotations"]
        odd = next((i for i, a in enumerate(annotations) if not isinstance(a, dict)), None)
        if odd is not None:
            raise DataError(f"{path}: annotations[{odd}] is not an object; expected COCO captions "
                            "(annotations[*].caption)")
        return [a.get("caption") for a in annotations]
    raise DataError(f"{path}: expected a JSON list of prompts or COCO captions (annotations[*].caption)")


def load_prompt_set(config: PromptsConfig) -> list[str]:
    """The prompts of a benchmark file, cleaned and selected like any prompt file."""
    from prefopt.data.prompts import clean_prompts, load_prompts, read_delimited, reading_errors, select_prompts

    path = Path(config.path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".json"):
        return load_prompts(config)
    if not path.is_file():
        raise DataError(f"prompt file not found: {path}")
    with reading_errors(path):
        if suffix == ".tsv":
            values = read_delimited(path, config.column, "\t", "prompts_file.column (PartiPrompts: Prompt)")
        else:
            values = _json(path)
    return select_prompts(clean_prompts(values, str(path)), config, str(path))


class PromptChoice(PluginConfig):
    """Which prompts an evaluator draws, how many images each, their seeds, and how many at a time."""

    prompts: list[str] = Field(default_factory=list, description="evaluation prompts (or prompts_file)")
    prompts_file: PromptsConfig | None = Field(
        None, description="read the prompts from this file instead: a path, or {path, column, max_count, ...}; "
                          ".txt/.jsonl/.csv/.parquet, PartiPrompts .tsv (column: Prompt), a JSON list (HPSv2 "
                          "benchmark), COCO captions .json")
    images_per_prompt: int = Field(1, ge=1, description="images drawn per prompt, each with its own seed")
    seed: int = Field(1234, description="sampling seed; the same for every method compared")
    batch_size: int = Field(4, ge=1, description="images per sampling call and per scorer forward")

    @field_validator("prompts_file", mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        # `prompts_file: parti.tsv` is short for `prompts_file: {path: parti.tsv}`.
        return {"path": value} if isinstance(value, str) else value


class PromptSetConfig(PromptChoice):
    """Which prompts, how many images each, their seeds, and how images are drawn and scored."""

    num_inference_steps: int | None = Field(None, ge=1, description="sampling steps (null: the backbone's)")
    guidance_scale: float | None = Field(None, ge=0, description="CFG scale (null: the backbone's)")
    dtype: str = Field("float32", pattern="^(float32|float16|bfloat16)$", description="scorer weights")
    compare_reference: bool = Field(True, description="also score the reference's images and report the win rate")


class PromptSetEvaluator(ImageEvaluator):
    """An image evaluator over a prompt set (a PromptChoice Config); subclasses give load_scorer() and score()."""

    def prompts(self) -> list[str]:
        cfg = self.config
        prompts = load_prompt_set(cfg.prompts_file) if cfg.prompts_file is not None else list(cfg.prompts)
        if not prompts:
            raise DataError(f"the {self.name} evaluator has no prompts: set prompts or prompts_file")
        return prompts

    def eval_rows(self) -> list[EvalRow]:
        return seeded_rows([(p, None, None) for p in self.prompts()], self.config.images_per_prompt,
                           self.config.seed)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
