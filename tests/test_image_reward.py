"""The ``image_reward`` evaluator against the image-reward package's own ``score``, on a random ImageReward model.

image-reward 1.5 imports names that transformers removed in 4.56, so it does
not import beside this project's transformers (docs/evaluation.md): these
tests run only where it does (not in CI). The model is the package's own
``ImageReward`` class (BLIP ViT-L image encoder, a BERT text encoder with
cross-attention of a tiny config, the MLP head), random, saved as a
checkpoint and loaded through the evaluator, which calls the package's
``load``. The package loads the ``bert-base-uncased`` tokenizer from the hub;
here a tokenizer of a few words stands in for it.
"""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from prefopt.evaluation import EvalRow, score_images
from prefopt_evaluators.image_reward import ImageReward

WORDS = "a photo of cat dog red blue car tree under the".split()
PROMPTS = ["a photo of a cat", "a red car under the tree"]


def image_reward_imports() -> bool:
    try:
        importlib.import_module("ImageReward")
    except Exception:  # noqa: BLE001 - missing, or failing on this transformers / torchvision
        return False
    return True


pytestmark = [
    pytest.mark.skipif(not image_reward_imports(),
                       reason="image-reward does not import here (it needs transformers <= 4.55 and torchvision)"),
    pytest.mark.slow,  # a random BLIP ViT-L: about a minute to build, save and load on 2 CPU cores
]


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """A random ImageReward checkpoint, its med_config, and the package's tokenizer loading pointed at a local one."""
    import ImageReward as package
    from ImageReward.models.BLIP import blip
    from transformers import BertTokenizer

    directory = tmp_path_factory.mktemp("image-reward")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")

    class LocalBertTokenizer(BertTokenizer):
        @classmethod
        def from_pretrained(cls, name, *args, **kwargs):
            assert name == "bert-base-uncased"
            return BertTokenizer.from_pretrained(str(directory), do_lower_case=True)

    # BLIP's med_config: BERT with cross-attention to the image; hidden size 768 is what the MLP head reads.
    med_config = directory / "med_config.json"
    med_config.write_text(json.dumps({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu", "hidden_size": 768,
        "num_hidden_layers": 1, "num_attention_heads": 12, "intermediate_size": 256, "max_position_embeddings": 64,
        "vocab_size": len(vocab) + 2, "type_vocab_size": 2, "pad_token_id": 0, "layer_norm_eps": 1e-12,
        "initializer_range": 0.02, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "encoder_width": 1024, "add_cross_attention": True}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(blip, "BertTokenizer", LocalBertTokenizer)
        torch.manual_seed(0)
        model = package.ImageReward(med_config=str(med_config), device="cpu")
        with torch.no_grad():  # the head's init gives every image nearly the same reward: spread it
            for param in model.mlp.parameters():
                param.normal_(0.0, 0.2)
        checkpoint = directory / "ImageReward.pt"
        torch.save(model.state_dict(), checkpoint)
        del model
        yield checkpoint, med_config


def pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((6, 6, 3)) * 255).astype("uint8")).resize((64 + 16 * i, 64), Image.BICUBIC)
            for i in range(n)]


def test_scores_equal_the_packages_own_and_ignore_batching(random_model):
    checkpoint, med_config = random_model
    config = ImageReward.Config(model=str(checkpoint), med_config=str(med_config), prompts=PROMPTS)
    scorer = ImageReward(config).load_scorer(torch.device("cpu"))
    images = pictures(5)
    rows = [EvalRow(PROMPTS[i % 2], i) for i in range(5)]

    def scores(batch_size, table=rows):
        evaluator = ImageReward(config.model_copy(update={"batch_size": batch_size}))
        return score_images(evaluator, scorer, images, table).per_image["score"]

    one, three, again = scores(1), scores(3), scores(3)
    with torch.no_grad():
        direct = [float(scorer.score(row.prompt, image)) for row, image in zip(rows, images)]
    assert all(math.isfinite(v) for v in three)
    assert three == again
    assert one == pytest.approx(direct, abs=1e-5)
    assert three == pytest.approx(direct, abs=1e-4)  # the head on a batch of 3 sums in another order: 4e-5
    # The reward reads the prompt: the same images under the other prompts score otherwise.
    swapped = scores(3, [EvalRow(PROMPTS[(i + 1) % 2], i) for i in range(5)])
    assert max(abs(a - b) for a, b in zip(swapped, three)) > 1e-4
