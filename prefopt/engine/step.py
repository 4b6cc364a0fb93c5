"""One fused training step: shared noise, batched predictions, the objective's loss.

Per step the engine makes exactly one forward per prediction source: every
frozen prediction an objective needs from the reference in a single no-grad
call (chunked to a micro-batch if asked), and every student prediction in a
single call with grad. Prompts are encoded once per unique prompt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from prefopt.interfaces import STUDENT, Backbone, LossOutput, Objective, ObjectiveInputs, Prediction, PromptRewrite


@dataclass
class PairBatch:
    x0_w: torch.Tensor
    x0_l: torch.Tensor
    prompts: list[str]
    degraded: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def _gather_cond(cond: dict, index: torch.Tensor) -> dict:
    return {key: value.index_select(0, index.to(value.device)) for key, value in cond.items()}


def _chunked(fn: Callable, x, t, cond: dict, size: int | None) -> torch.Tensor:
    if size is None or x.shape[0] <= size:
        return fn(x, t, cond)
    outs = []
    for start in range(0, x.shape[0], size):
        stop = start + size
        outs.append(fn(x[start:stop], t[start:stop], {k: v[start:stop] for k, v in cond.items()}))
    return torch.cat(outs)


class FusedStep:
    """Computes the loss of one batch of pairs for an objective on a backbone."""

    def __init__(self, backbone: Backbone, objective: Objective, reference_micro_batch: int | None = None,
                 encode: Callable[[list[str]], dict] | None = None, rewrite: PromptRewrite | None = None):
        self.backbone = backbone
        self.objective = objective
        # The objective's per-pair prompt changes (objective.prompt_rewrite), or None.
        self.rewrite = rewrite
        self.independent_noise = objective.independent_noise()
        self.reference_micro_batch = reference_micro_batch
        # Prompt encoding: the backbone's text encoder, or a TextCache built before training.
        self.encode = encode or backbone.encode_prompts
        requested = list(dict.fromkeys(objective.predictions()))  # de-duplicated, ordered
        self.by_source: dict[str, list[Prediction]] = defaultdict(list)
        for prediction in requested:
            self.by_source[prediction.source].append(prediction)

    def __call__(
        self,
        batch: PairBatch,
        generator: torch.Generator,
        device: torch.device,
        reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    ) -> LossOutput:
        backbone = self.backbone
        n = len(batch)
        # A pair shares its timestep and its noise (drawn on the CPU generator,
        # so the draw is identical on every device and after a resume).
        t = backbone.sample_timesteps(n, generator).to(device)
        noise = {"w": torch.randn(batch.x0_w.shape, generator=generator, dtype=torch.float32).to(device)}
        # An objective may ask for the loser's own noise (official DDSPO --pos_neg_different_noise);
        # it is drawn after the shared one, so runs without it draw exactly as before.
        noise["l"] = (torch.randn(batch.x0_l.shape, generator=generator, dtype=torch.float32).to(device)
                      if self.independent_noise else noise["w"])
        x0 = {"w": batch.x0_w.to(device, torch.float32), "l": batch.x0_l.to(device, torch.float32)}
        x_t = {side: backbone.add_noise(x0[side], noise[side], t) for side in x0}
        targets = {side: backbone.regression_target(x0[side], noise[side], t) for side in x0}
        swapped = None
        if self.rewrite is not None:
            rewritten = self.rewrite(batch.prompts, batch.degraded, backbone.t_fraction(t).cpu(), generator)
            batch = PairBatch(batch.x0_w, batch.x0_l, rewritten.prompts, rewritten.degraded)
            swapped = rewritten.swapped.to(device)

        cond, cond_index = self._encode_prompts(batch)
        predictions = self._predict(x_t, t, cond, cond_index, n)
        inputs = ObjectiveInputs(
            predictions=predictions,
            targets=targets,
            t_fraction=backbone.t_fraction(t),
            weight=backbone.loss_weight(t),
            reduce_mean=reduce_mean,
            swapped=swapped,
            num_train_timesteps=backbone.num_train_timesteps(),
            prediction_type=backbone.prediction_type(),
        )
        return self.objective.loss(inputs)

    def _predict(self, x_t: dict, t: torch.Tensor, cond: dict, cond_index: dict, n: int
                 ) -> dict[Prediction, torch.Tensor]:
        """Every requested prediction: one call per source (chunked for the reference if asked)."""
        backbone = self.backbone
        predictions: dict[Prediction, torch.Tensor] = {}
        for source, wanted in self.by_source.items():
            x_in = torch.cat([x_t[p.latent] for p in wanted])
            t_in = t.repeat(len(wanted))
            cond_in = _gather_cond(cond, torch.cat([cond_index[p.prompt] for p in wanted]))
            if source == STUDENT:
                out = backbone.predict(x_in, t_in, cond_in, source)
            else:
                with torch.no_grad():
                    out = _chunked(
                        lambda x, tt, c: backbone.predict(x, tt, c, source),
                        x_in, t_in, cond_in, self.reference_micro_batch,
                    )
            for p, chunk in zip(wanted, out.float().split(n)):
                predictions[p] = chunk
        return predictions

    def _encode_prompts(self, batch: PairBatch):
        """Encode each unique prompt once; index tensors map c / c- rows to it."""
        needed_slots = {p.prompt for preds in self.by_source.values() for p in preds}
        texts: list[str] = []
        position: dict[str, int] = {}
        index: dict[str, torch.Tensor] = {}
        for slot, prompts in (("c", batch.prompts), ("c-", batch.degraded)):
            if slot not in needed_slots:
                continue
            rows = []
            for text in prompts:
                if text not in position:
                    position[text] = len(texts)
                    texts.append(text)
                rows.append(position[text])
            index[slot] = torch.tensor(rows, dtype=torch.long)
        with torch.no_grad():
            cond = self.encode(texts)
        return cond, index
