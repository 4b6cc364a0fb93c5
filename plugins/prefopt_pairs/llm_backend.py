"""The transformers side of ``llm_rewrite``: load a chat LLM, answer chats in batches.

Imported only from inside ``LLMRewrite.pairs``, so torch and transformers are
never imported when a recipe is merely validated.
"""

from __future__ import annotations

from typing import Sequence

import torch

from prefopt.errors import PrefoptError, require

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype_keyword(transformers) -> str:
    """transformers 4.56 renamed ``torch_dtype`` to ``dtype``; older versions know only the first."""
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class ChatGenerator:
    """A causal LM with its tokenizer, answering chat conversations in left-padded batches.

    Use it as a context manager: leaving it frees the model, so an 8B LLM does
    not sit in GPU memory while the diffusion model samples the pair images.
    """

    def __init__(self, model: str, revision: str | None = None, dtype: str = "auto", device: str | None = None):
        transformers = require("transformers", "llm")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(model, revision=revision)
            # device_map puts the weights straight on the device, without a CPU copy first.
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                model, revision=revision, device_map=str(self.device), **{_dtype_keyword(transformers): DTYPES[dtype]}
            )
        except OSError as exc:
            raise PrefoptError(f"llm_rewrite cannot load the LLM {model!r}: {exc}") from exc
        if not self.tokenizer.chat_template:
            raise PrefoptError(f"llm_rewrite needs a chat model, but {model!r} has no chat template")
        # Decoder-only models continue the rightmost token, so pad on the left.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()

    def __enter__(self) -> "ChatGenerator":
        return self

    def __exit__(self, *exc_info) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def generate(
        self, chats: Sequence[list[dict[str, str]]], *, seed: int, temperature: float, max_new_tokens: int
    ) -> list[str]:
        """The model's answer to each chat, sampled after ``torch.manual_seed(seed)``."""
        texts = [
            self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats
        ]
        # The rendered template already holds the special tokens (BOS) it wants.
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        torch.manual_seed(seed)
        output = self.model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
        )
        answers = output[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(answers, skip_special_tokens=True)
