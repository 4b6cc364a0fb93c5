"""LLM rewrite: an instruction-tuned causal LM degrades each prompt (paper's LLaMA (TA) / (AQ)).

This module stays free of torch and transformers so ``prefopt validate`` can
read its Config; the model itself lives in ``prefopt_pairs.llm_backend``,
imported only when pairs are made.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

from pydantic import Field

from prefopt.interfaces import PairSource, PluginConfig, PromptPair
from prefopt_pairs.common import require_prompts, row_seed, stable_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Template:
    """Instructions plus worked examples (prompt, important words, degraded prompts)."""

    instructions: str
    examples: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]


ANSWER_FORMAT = (
    "First write the important words of the prompt on one line, separated by commas. "
    "Then write the degraded prompts as a JSON list of strings on one line, and nothing after it."
)

TEMPLATES: dict[str, Template] = {
    "text_alignment": Template(
        instructions=(
            "You help build training data for a text-to-image model. Given an image prompt, "
            "write degraded versions of it that an image made from them would no longer match: "
            "remove the key objects or replace them with vaguer, more generic words, and drop or "
            "generalise their attributes (colour, number, material, size) and their spatial "
            "relations. Each degraded prompt must still read as a short, fluent prompt. " + ANSWER_FORMAT
        ),
        examples=(
            (
                "a red bicycle leaning against a brick wall at sunset",
                ("red", "bicycle", "leaning against", "brick wall", "sunset"),
                ("a vehicle near a wall", "a bicycle outdoors"),
            ),
            (
                "three white ceramic cups stacked on a wooden tray",
                ("three", "white", "ceramic", "cups", "stacked", "wooden tray"),
                ("some cups on a table", "a tray with objects"),
            ),
        ),
    ),
    "aesthetic_quality": Template(
        instructions=(
            "You help build training data for a text-to-image model. Given an image prompt, "
            "write degraded versions of it that keep the subject but make the picture look worse: "
            "remove or replace the words about style, lighting, composition, detail and artistic "
            "quality, and add words for poor quality such as blurry, dull colours, low resolution, "
            "amateur snapshot or bad composition. " + ANSWER_FORMAT
        ),
        examples=(
            (
                "portrait of an elderly fisherman, dramatic rim lighting, highly detailed, 85mm, "
                "award-winning photograph",
                ("dramatic rim lighting", "highly detailed", "85mm", "award-winning photograph"),
                (
                    "portrait of an elderly fisherman, flat lighting, blurry, amateur snapshot",
                    "low resolution photo of an elderly fisherman, overexposed, out of focus",
                ),
            ),
            (
                "a serene mountain lake at dawn, oil painting in the style of the Hudson River School, "
                "soft golden light",
                ("serene", "oil painting", "Hudson River School", "soft golden light"),
                (
                    "a mountain lake, dull colours, crude sketch",
                    "a mountain lake at dawn, muddy colours, poorly drawn, bad composition",
                ),
            ),
        ),
    ),
}


def _request(prompt: str, count: int) -> str:
    return f"Prompt: {json.dumps(prompt)}\nWrite {count} degraded prompt{'s' if count > 1 else ''}."


def _answer(words: Sequence[str], rewrites: Sequence[str]) -> str:
    return f"Important words: {', '.join(words)}\nDegraded prompts: {json.dumps(list(rewrites))}"


def build_messages(template: str, prompt: str, variants: int) -> list[dict[str, str]]:
    """The few-shot chat for one prompt.

    The instructions open the first user turn rather than a system turn,
    because some chat templates (Gemma's) reject the system role.
    """
    spec = TEMPLATES[template]
    messages: list[dict[str, str]] = []
    for example_prompt, words, rewrites in spec.examples:
        messages.append({"role": "user", "content": _request(example_prompt, len(rewrites))})
        messages.append({"role": "assistant", "content": _answer(words, rewrites)})
    messages.append({"role": "user", "content": _request(prompt, variants)})
    messages[0]["content"] = f"{spec.instructions}\n\n{messages[0]['content']}"
    return messages


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _clean(value: object, original: str) -> list[str]:
    """The usable rewrites in a decoded JSON value: distinct, non-empty strings other than the original."""
    if not isinstance(value, list):
        return []
    unchanged = _normalise(original).casefold()
    rewrites: list[str] = []
    for item in value:
        if not isinstance(item, str):
            continue
        text = _normalise(item)
        if text and text.casefold() != unchanged and text not in rewrites:
            rewrites.append(text)
    return rewrites


def parse_rewrites(text: str, original: str) -> list[str] | None:
    """The degraded prompts in an LLM answer, or None when it holds none.

    Takes the first JSON list (tried at every ``[`` in order, so chatter,
    ```json fences and a wrapping object are all fine) that has at least one
    usable item. Non-strings, empty strings and the unchanged original are
    dropped; truncated or malformed JSON counts as nothing.
    """
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        rewrites = _clean(value, original)
        if rewrites:
            return rewrites
    return None


class LLMRewrite(PairSource):
    """Ask an instruction-tuned LLM to degrade each prompt (LLaMA (TA) / (AQ) in Table 3a).

    The model answers a few-shot chat (the tokenizer's chat template) with the
    prompt's important words and a JSON list of degraded prompts. Answers that
    hold no usable list are retried up to ``max_retries`` times and then the
    prompt is skipped, never turned into a pair; ``self.stats`` counts
    unparsed answers, retried prompts and skipped prompts. Generation is
    seeded per batch, so on one device the pairs repeat for a seed.
    """

    name: ClassVar[str] = "llm_rewrite"
    needs = frozenset({"prompts", "sampling"})

    class Config(PluginConfig):
        """Which LLM rewrites the prompts, with which template and sampling settings."""

        model: str = Field("meta-llama/Meta-Llama-3-8B-Instruct", description="hub id or local dir of a chat LLM")
        revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
            "auto", description="weights dtype; auto: bfloat16 on CUDA, float32 on CPU"
        )
        device: str | None = Field(None, description="torch device; default cuda if available, else cpu")
        template: Literal["text_alignment", "aesthetic_quality"] = Field(
            "text_alignment", description="what the rewrite degrades: text alignment (TA) or aesthetic quality (AQ)"
        )
        temperature: float = Field(0.7, ge=0, description="sampling temperature; 0 decodes greedily")
        max_new_tokens: int = Field(256, ge=1, description="answer length limit")
        batch_size: int = Field(8, ge=1, description="prompts per generate call")
        variants: int = Field(
            1, ge=1, description="degraded prompts asked for per prompt (fewer when the answer has fewer)"
        )
        max_retries: int = Field(1, ge=0, description="new attempts for a prompt whose answer held no usable list")

    def __init__(self, config: PluginConfig | None = None):
        super().__init__(config)
        self.stats = {"unparsed": 0, "retried": 0, "skipped": 0}

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> list[PromptPair]:
        from prefopt_pairs.llm_backend import ChatGenerator

        prompts = require_prompts(prompts, self.name)
        cfg = self.config
        with ChatGenerator(cfg.model, revision=cfg.revision, dtype=cfg.dtype, device=cfg.device) as generator:
            rewrites = self._rewrite_all(generator, prompts, seed)
        rows: list[PromptPair] = []
        for index, prompt in enumerate(prompts):
            for negative in rewrites.get(index, []):
                rows.append(PromptPair(prompt=prompt, degraded=negative, seed=row_seed(seed, len(rows))))
        return rows

    def _rewrite_all(self, generator, prompts: list[str], seed: int) -> dict[int, list[str]]:
        """Degraded prompts by prompt index; prompts still unparsed after the retries are absent."""
        self.stats = {"unparsed": 0, "retried": 0, "skipped": 0}
        done: dict[int, list[str]] = {}
        pending = list(range(len(prompts)))
        for attempt in range(self.config.max_retries + 1):
            if not pending:
                break
            if attempt:
                self.stats["retried"] += len(pending)
            log.info("llm_rewrite: attempt %d for %d prompt(s)", attempt + 1, len(pending))
            pending = self._attempt(generator, prompts, pending, done, stable_seed(seed, "llm_rewrite", attempt))
            self.stats["unparsed"] += len(pending)
        self.stats["skipped"] = len(pending)
        if self.stats["unparsed"]:
            log.warning(
                "llm_rewrite: %d answer(s) held no usable JSON list; %d prompt(s) retried, %d skipped",
                self.stats["unparsed"], self.stats["retried"], self.stats["skipped"],
            )
        return done

    def _attempt(self, generator, prompts, pending: list[int], done: dict[int, list[str]], seed: int) -> list[int]:
        """One pass over ``pending`` in batches; fills ``done`` and returns the indices that failed."""
        cfg = self.config
        failed: list[int] = []
        for start in range(0, len(pending), cfg.batch_size):
            batch = pending[start : start + cfg.batch_size]
            answers = generator.generate(
                [build_messages(cfg.template, prompts[i], cfg.variants) for i in batch],
                seed=stable_seed(seed, start),
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
            )
            for index, answer in zip(batch, answers):
                rewrites = parse_rewrites(answer, prompts[index])
                if rewrites is None:
                    failed.append(index)
                else:
                    done[index] = rewrites[: cfg.variants]
        return failed
