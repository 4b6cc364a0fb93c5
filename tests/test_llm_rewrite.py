"""llm_rewrite: the answer parser, and the real load / chat template / batched generate path
on a tiny random Llama built and saved here (no network, no hub weights)."""

from __future__ import annotations

import sys

import pytest

from prefopt.errors import MissingDependencyError, PrefoptError
from prefopt_pairs.llm_rewrite import TEMPLATES, LLMRewrite, build_messages, parse_rewrites

ORIGINAL = "a red cat on a mat"

# --------------------------------------------------------------------------- parser


@pytest.mark.parametrize(
    "answer, expected",
    [
        ('["a cat", "a mat"]', ["a cat", "a mat"]),
        ('```json\n["a cat",\n "an animal on a mat"]\n```', ["a cat", "an animal on a mat"]),
        ('Important words: red, cat\nDegraded prompts: ["a cat"]\nHope this helps!', ["a cat"]),
        ('Sure [1] here: ["a cat"]', ["a cat"]),  # a list without strings is passed over
        ('{"degraded": ["a cat"]}', ["a cat"]),  # a wrapping object is fine
        ('["a cat", 3, null, ["x"], "  a   mat "]', ["a cat", "a mat"]),  # non-strings dropped, spaces collapsed
        ('["a cat", "a cat", "A red cat on a mat"]', ["a cat"]),  # duplicates and the original dropped
    ],
)
def test_parser_accepts(answer, expected):
    assert parse_rewrites(answer, ORIGINAL) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "I cannot help with that.",
        '{"degraded": "a cat"}',  # an object, no list
        "[]",
        '["", "   "]',
        '["a red cat on a mat"]',  # unchanged
        '["  A red  cat on a mat "]',  # unchanged up to case and spacing
        '["a cat", "a d',  # truncated
        "[1, 2, {\"a\": 3}]",  # no strings
        "['a cat']",  # not JSON
    ],
)
def test_parser_rejects(answer):
    assert parse_rewrites(answer, ORIGINAL) is None


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_templates_are_few_shot_chats_whose_examples_parse(template):
    messages = build_messages(template, ORIGINAL, variants=3)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"].startswith(TEMPLATES[template].instructions)
    assert '"a red cat on a mat"' in messages[-1]["content"] and "3 degraded prompts" in messages[-1]["content"]
    for request, answer in zip(messages[0::2], messages[1::2]):
        assert parse_rewrites(answer["content"], request["content"]) is not None


# --------------------------------------------------------------------------- end to end on a tiny LM

SPECIALS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "Important words: red, cat",
    'Degraded prompts: ["a cat", "a dog"]',
    "a red cat on a mat",
    "two dogs play in the snow",
]
VALID_ANSWER = 'Important words: cat\nDegraded prompts: ["a cat", "a dog"]'
PROMPTS = ["a red cat on a mat", "two dogs play", "a red dog in the snow"]


def save_tiny_llm(directory, chat_template: str | None = CHAT_TEMPLATE) -> str:
    """A word-level tokenizer trained on CORPUS and a random 2-layer Llama, saved like a hub model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel(unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    word_level.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=SPECIALS[3:],
    )
    tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=32, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    tokenizer.save_pretrained(directory)
    LlamaForCausalLM(config).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    pytest.importorskip("transformers")
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture
def generate_calls(monkeypatch):
    """Records each batch the real ``generate`` receives (it still runs unchanged)."""
    from transformers import LlamaForCausalLM

    calls = []
    real_generate = LlamaForCausalLM.generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", spy)
    return calls


def rewrite(model_dir, **settings) -> LLMRewrite:
    return LLMRewrite(LLMRewrite.Config(model=model_dir, max_new_tokens=8, **settings))


def test_random_lm_answers_are_counted_retried_and_skipped(tiny_llm, generate_calls):
    source = rewrite(tiny_llm, batch_size=2, max_retries=1)
    assert source.pairs(PROMPTS, seed=0) == []
    assert source.stats == {"unparsed": 6, "retried": 3, "skipped": 3}
    assert [len(call["input_ids"]) for call in generate_calls] == [2, 1, 2, 1]
    # Left padding: every row ends on real tokens; the shorter row of a batch starts on padding.
    mask = generate_calls[0]["attention_mask"]
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all())


def test_a_valid_answer_from_the_real_generate_becomes_pairs(tiny_llm, monkeypatch):
    """The first attempt samples freely (garbage); retries are constrained to spell VALID_ANSWER."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    forced = tokenizer(VALID_ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    real_generate = LlamaForCausalLM.generate
    calls = []

    def generate_then_force(self, *args, **kwargs):
        calls.append(kwargs)
        if len(calls) > 1:
            prompt_length = kwargs["input_ids"].shape[1]
            kwargs["max_new_tokens"] = len(forced)
            kwargs["prefix_allowed_tokens_fn"] = lambda row, ids: [forced[len(ids) - prompt_length]]
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", generate_then_force)
    source = rewrite(tiny_llm, variants=2, max_retries=2)
    rows = source.pairs(PROMPTS, seed=0)
    assert len(calls) == 2
    assert source.stats == {"unparsed": 3, "retried": 3, "skipped": 0}
    assert [(row.prompt, row.degraded) for row in rows] == [(p, n) for p in PROMPTS for n in ("a cat", "a dog")]
    assert len({row.seed for row in rows}) == len(rows)
    assert all(row.winner is None and row.loser is None and row.loser_from is None for row in rows)


def test_generation_is_seeded_and_uses_the_chat_template(tiny_llm):
    from prefopt_pairs.llm_backend import ChatGenerator

    chats = [build_messages("aesthetic_quality", p, 1) for p in PROMPTS]
    settings = dict(temperature=0.7, max_new_tokens=8)
    with ChatGenerator(tiny_llm) as generator:
        first = generator.generate(chats, seed=1, **settings)
        assert generator.generate(chats, seed=1, **settings) == first
        assert generator.generate(chats, seed=2, **settings) != first
        rendered = generator.tokenizer.apply_chat_template(chats[0], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<s><|user|>\n") and rendered.endswith("<|assistant|>\n")
    assert len(first) == len(PROMPTS) and all(isinstance(answer, str) for answer in first)


def test_a_model_without_chat_template_is_refused(tmp_path):
    pytest.importorskip("transformers")
    model_dir = save_tiny_llm(tmp_path, chat_template=None)
    with pytest.raises(PrefoptError, match="has no chat template"):
        rewrite(model_dir).pairs(PROMPTS, seed=0)


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"prefopt\[llm\]"):
        rewrite("unused").pairs(PROMPTS, seed=0)
