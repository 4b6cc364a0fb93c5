"""Pair sources of the digit world.

``digit_scenes`` gives ground-truth scenes with imperfect captions to pretrain
the reference (winner = loser = the scene: only the denoising loss reads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from pydantic import Field

from prefopt.interfaces import PairSource, PluginConfig, PromptPair

if TYPE_CHECKING:
    import numpy as np


class DigitScenes(PairSource):
    """Composed scenes captioned in GenEval's grammar; a share of captions drop or swap an attribute.

    Each scene picks one of the six tags uniformly, an entry of that tag from
    the whole grammar, and a fresh scene that satisfies it (digits of the
    generator half only). With probability ``caption_noise`` its caption is
    corrupted (prefopt_digits.prompts.corrupt); with ``empty_share`` it is
    the empty prompt, so classifier-free guidance has an unconditional model.
    """

    name = "digit_scenes"

    class Config(PluginConfig):
        scenes: int = Field(20000, ge=1)
        caption_noise: float = Field(0.3, ge=0, le=1, description="share of captions that drop or swap an attribute")
        empty_share: float = Field(0.1, ge=0, lt=1, description="share of empty captions (unconditional, for CFG)")

    def pairs(self, prompts: Sequence[str] | None, seed: int) -> list[PromptPair]:
        return [PromptPair(prompt=caption, degraded=caption, seed=i, winner=scene, loser=scene)
                for i, (_, caption, scene) in enumerate(self.captioned_scenes(seed))]

    def captioned_scenes(self, seed: int) -> list[tuple[dict, str, "np.ndarray"]]:
        """(the entry a scene was composed for, its caption, the scene as HWC uint8), seeded."""
        import numpy as np

        from prefopt_digits import prompts as grammar
        from prefopt_digits import world

        cfg = self.config
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(cfg.scenes):
            record = grammar.random_entry(grammar.TAGS[int(rng.integers(len(grammar.TAGS)))], rng)
            scene = world.to_uint8(world.compose(world.scene_for(record, rng), rng))
            draw = rng.random()
            if draw < cfg.empty_share:
                caption = ""
            elif draw < cfg.empty_share + cfg.caption_noise * (1 - cfg.empty_share):
                caption = grammar.corrupt(record, rng)
            else:
                caption = record["prompt"]
            out.append((record, caption, scene))
        return out
