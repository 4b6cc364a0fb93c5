"""Tiny random scorers of the real classes the evaluators load, saved to disk offline."""

from __future__ import annotations

from pathlib import Path

import torch

DETECTOR_LABELS = ["person", "cat", "dog", "car", "computer mouse"]
DETECTOR_IMAGE_SIZE = 64
# GenEval metadata rows over the tiny detector's classes, in words the tiny tokenizers know.
GENEVAL_ROWS = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
    {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
     "prompt": "a photo of a cat and a dog"},
    {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
     "prompt": "a photo of two dogs"},
]


def write_geneval_metadata(path: Path, rows=GENEVAL_ROWS) -> Path:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_mask2former(directory: Path, labels=DETECTOR_LABELS) -> Path:
    """A random Mask2FormerForUniversalSegmentation (Swin backbone) and its image processor."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former import Mask2FormerImageProcessorPil

    backbone = SwinConfig(image_size=DETECTOR_IMAGE_SIZE, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        dim_feedforward=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=12,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    # A random head spreads its probability over every class and "no object": lift the real classes
    # (different amounts, so that both sides of GenEval's 0.3 threshold occur) and widen the mask logits.
    with torch.no_grad():
        model.class_predictor.weight.mul_(20.0)
        model.class_predictor.bias[:-1] += torch.linspace(0.0, 2.0, len(labels))
        model.model.transformer_module.decoder.mask_predictor.mask_embedder.get_submodule("2.0").weight.mul_(30.0)
    model.save_pretrained(directory)
    Mask2FormerImageProcessorPil(size={"shortest_edge": DETECTOR_IMAGE_SIZE, "longest_edge": 2 * DETECTOR_IMAGE_SIZE},
                                 size_divisor=32).save_pretrained(directory)
    return directory


BLIP_WORDS = "a photo of cat dog red blue green car tree and yes no".split()


def build_blip_vqa(directory: Path) -> Path:
    """A random BlipForQuestionAnswering with a word-level BERT tokenizer and its processor."""
    from transformers import (BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor,
                              BlipProcessor)

    directory.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "?"]
    vocab = special + BLIP_WORDS
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"))
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, encoder_hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=vocab.index("[DEC]"), pad_token_id=0, sep_token_id=vocab.index("[SEP]")),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=8,
    )).eval()
    model.save_pretrained(directory)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(directory)
    return directory
