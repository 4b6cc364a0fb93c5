"""The ``t2i_compbench`` evaluator: T2I-CompBench's attribute binding (colour, shape, texture) by BLIP-VQA.

T2I-CompBench (Huang et al., 2023) asks BLIP-VQA one question per noun
phrase of the prompt ("a green bench?", "a red car?") and scores an image by
the product of the probabilities of "yes". The benchmark finds noun phrases
with spaCy's noun chunks; its attribute-binding prompts join "a/an ADJ NOUN"
phrases with "and" and commas, which is where this evaluator splits them
(``phrases`` in the results file shows what was asked). Prompt files from the
user (the benchmark's ``color_val.txt``, ``shape_val.txt``, ``texture_val.txt``).

Its CLIPScore part (non-spatial prompts) is the ``clip_score`` evaluator with
CLIP ViT-B/32 and ``scale: 1`` (the plain cosine); its spatial part needs the
UniDet detector, which prefopt does not ship.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from pydantic import Field

from prefopt.evaluation import EvalRow, Scores
from prefopt_evaluators.prompt_sets import PromptSetConfig, PromptSetEvaluator, torch_dtype

SEPARATORS = re.compile(r",|\band\b|\bwith\b|;")
# Phrases the benchmark drops from its questions.
SKIPPED = {"top", "the side", "the left", "the right"}


def noun_phrases(prompt: str) -> list[str]:
    """The phrases asked about: the prompt split at commas, "and", "with" and semicolons."""
    parts = [" ".join(part.split()).strip(" .") for part in SEPARATORS.split(prompt)]
    return [part for part in parts if part and part not in SKIPPED]


class T2ICompBench(PromptSetEvaluator):
    """BLIP-VQA attribute-binding score: per image the product of P(yes) over its noun phrases."""

    name = "t2i_compbench"

    class Config(PromptSetConfig):
        model: str = Field("Salesforce/blip-vqa-base", description="BlipForQuestionAnswering: hub id or local dir")
        prefix: str = Field("compbench", pattern=r"^[A-Za-z0-9_.-]+$",
                            description="metric and file prefix, e.g. compbench_color")

    def load_scorer(self, device) -> Any:
        from prefopt_evaluators.blip_vqa import BlipVqa

        return BlipVqa(self.config.model, device, torch_dtype(self.config.dtype))

    def score(self, scorer, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
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
