"""The heavy half of the ``t2i_compbench`` evaluator: BLIP-VQA's probability of "yes" through transformers.

Kept apart because it imports torch at module top (``prefopt validate``
imports every evaluator's module to read its Config).
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

ANSWERS = ("yes", "no")


class BlipVqa:
    """P("yes") of BlipForQuestionAnswering for a question about an image, ranked against "no".

    Each answer's log-likelihood is the sum of its tokens' log-probabilities
    under the answer decoder (started, as BLIP generates, from its
    decoder-start token), and P(yes) is the softmax of the two
    log-likelihoods: T2I-CompBench's ranking of the answers "yes" and "no".
    """

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype):
        from transformers import BlipForQuestionAnswering, BlipProcessor

        self.device, self.dtype = device, dtype
        self.model = BlipForQuestionAnswering.from_pretrained(model, dtype=dtype).to(device).eval()
        self.processor = BlipProcessor.from_pretrained(model)
        start = self.model.config.text_config.bos_token_id
        tokens = self.processor.tokenizer(list(ANSWERS), padding=True, return_tensors="pt")
        self.answer_ids = tokens["input_ids"].clone()
        self.answer_ids[:, 0] = start
        self.answer_mask = tokens["attention_mask"]

    def yes_probabilities(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[float]:
        """One P(yes) per (image, question) row."""
        inputs = self.processor(images=[im.convert("RGB") for im in images], text=list(questions), padding=True,
                                return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        image_embeds = self.model.vision_model(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        question_mask = inputs["attention_mask"].to(self.device)
        question = self.model.text_encoder(input_ids=inputs["input_ids"].to(self.device), attention_mask=question_mask,
                                           encoder_hidden_states=image_embeds,
                                           encoder_attention_mask=image_mask).last_hidden_state
        rows, answers = question.shape[0], len(ANSWERS)
        # Every row against every answer: rows × answers decoder inputs.
        ids = self.answer_ids.to(self.device).repeat(rows, 1)
        mask = self.answer_mask.to(self.device).repeat(rows, 1)
        logits = self.model.text_decoder(input_ids=ids, attention_mask=mask,
                                         encoder_hidden_states=question.repeat_interleave(answers, dim=0),
                                         encoder_attention_mask=question_mask.repeat_interleave(answers, dim=0),
                                         ).logits.float()
        log_probs = logits[:, :-1].log_softmax(dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        likelihood = (log_probs * mask[:, 1:]).sum(dim=1).view(rows, answers)
        return likelihood.softmax(dim=-1)[:, 0].cpu().tolist()
