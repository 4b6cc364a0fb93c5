"""GenEval's detector through transformers: Mask2Former instances and CLIP colour names.

Kept apart from ``geneval`` because it imports torch and transformers, and
``prefopt validate`` imports every evaluator's module to read its Config.

Instances are read from Mask2Former's outputs as mmdetection's Mask2Former
head (the benchmark's own detector) reads them: mask logits resized to the
image, the top ``num_queries`` (query, class) pairs by class probability,
each scored by its probability × the mean sigmoid inside its binary mask,
and boxed by the mask's extent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from prefopt.errors import DataError, describe_os_error
from prefopt_evaluators.geneval_rules import COLOURS, Detection, classes_of

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GREY = "#999999"  # what GenEval paints outside an object's mask before naming its colour
COLOUR_TEMPLATES = ("a photo of a {c} {label}", "a photo of a {c}-colored {label}", "a photo of a {c} object")
# COCO's label names in transformers' configs where GenEval's metadata names the class otherwise.
GENEVAL_NAMES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


def _projected(output) -> torch.Tensor:
    """transformers < 5 returns the projected features; 5 returns an output holding them as pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) boolean masks -> (N, 4) boxes x0, y0, x1, y1 (exclusive ends); zeros for an empty mask."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    columns, rows = masks.any(dim=1), masks.any(dim=2)
    for i in range(masks.shape[0]):
        xs, ys = torch.where(columns[i])[0], torch.where(rows[i])[0]
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def instances(class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: Sequence[str]) -> list[Detection]:
    """One image's detections from its query class logits (Q, K+1) and mask logits (Q, H, W) at image size."""
    queries, classes = class_logits.shape[0], class_logits.shape[1] - 1
    probabilities = class_logits.float().softmax(dim=-1)[:, :-1]  # the last class is "no object"
    scores, flat = probabilities.flatten().topk(queries, sorted=False)
    query, label = flat // classes, flat % classes
    logits = mask_logits[query].float()
    binary = logits > 0
    mask_score = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    confidence = scores * mask_score
    boxes = mask_boxes(binary)
    masks = binary.cpu().numpy()
    return [Detection(labels[int(label[i])], float(confidence[i]), tuple(boxes[i].tolist()), masks[i])
            for i in range(queries)]


class ClipColours:
    """CLIP zero-shot over GenEval's ten colours, three templates averaged, on masked box crops."""

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype):
        from transformers import CLIPModel, CLIPProcessor

        self.device, self.dtype = device, dtype
        self.model = CLIPModel.from_pretrained(model, dtype=dtype).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(model)
        self._classifiers: dict[str, torch.Tensor] = {}

    def classifier(self, label: str) -> torch.Tensor:
        """(colours, dim) unit text embeddings: each colour's templates embedded, normalised, averaged."""
        if label not in self._classifiers:
            texts = [t.format(c=c, label=label) for c in COLOURS for t in COLOUR_TEMPLATES]
            inputs = self.processor(text=texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
            features = _projected(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                               attention_mask=inputs["attention_mask"]))
            features = F.normalize(features.float(), dim=-1).view(len(COLOURS), len(COLOUR_TEMPLATES), -1)
            self._classifiers[label] = F.normalize(features.mean(dim=1), dim=-1)
        return self._classifiers[label]

    def __call__(self, image: Image.Image, detections: Sequence[Detection], label: str) -> list[str]:
        crops = [masked_crop(image, d) for d in detections]
        pixels = self.processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        features = F.normalize(_projected(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        choice = (features @ self.classifier(label).T).argmax(dim=-1)
        return [COLOURS[int(i)] for i in choice]


def masked_crop(image: Image.Image, detection: Detection) -> Image.Image:
    """The detection's box cut from the image with everything outside its mask painted grey."""
    image = image.convert("RGB")
    if detection.mask is not None:
        image = Image.composite(image, Image.new("RGB", image.size, GREY), Image.fromarray(np.asarray(detection.mask)))
    crop = image.crop(detection.box)
    # A box of an empty mask has no pixels: CLIP then sees the whole (grey) picture.
    return crop if crop.width and crop.height else image


def label_names(config, object_names: str | None = None) -> list[str]:
    """A Mask2Former config's classes in order: the lines of ``object_names``, or its own names in GenEval's
    spelling."""
    if object_names is None:
        return [GENEVAL_NAMES.get(config.id2label[i], config.id2label[i]) for i in range(config.num_labels)]
    try:
        text = Path(object_names).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{object_names} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read {describe_os_error(exc, object_names)}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != config.num_labels:
        raise DataError(f"{object_names} names {len(labels)} classes; the detector has {config.num_labels}")
    return labels


class Mask2FormerDetector:
    """Mask2Former instance segmentation + CLIP colours, the ``geneval`` evaluator's detector.

    Without a ``colour_model`` (T2I-CompBench's spatial part needs no colours) no CLIP is loaded.
    """

    def __init__(self, model: str, colour_model: str | None, device: torch.device, dtype: str,
                 object_names: str | None = None, size: tuple[int, int] | None = None):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.device, self.dtype = device, DTYPES[dtype]
        self.processor = AutoImageProcessor.from_pretrained(model)
        # Resized keeping the aspect, the shorter side to size[0] unless the longer would pass size[1].
        self.size = None if size is None else {"shortest_edge": size[0], "longest_edge": size[1]}
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model, dtype=self.dtype).to(device).eval()
        self.labels = label_names(self.model.config, object_names)
        self.colours = None if colour_model is None else ClipColours(colour_model, device, self.dtype)

    def check_classes(self, rows: Sequence[dict[str, Any]]) -> None:
        """Every class the prompts name must be one the detector can find."""
        unknown = sorted(classes_of(rows) - set(self.labels))
        if unknown:
            raise DataError(f"the detector has no class {unknown[0]!r} that the GenEval prompts name; "
                            "set object_names to the names of its classes")

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        images = [image.convert("RGB") for image in images]
        inputs = self.processor(images=images, return_tensors="pt", **({"size": self.size} if self.size else {}))
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        pixel_mask = inputs.get("pixel_mask")
        out = self.model(pixel_values=pixels, pixel_mask=None if pixel_mask is None else pixel_mask.to(self.device))
        # Mask logits come at a quarter of the network's input: to the input's size, the image's part
        # of it (without padding), then the image's own size.
        masks = F.interpolate(out.masks_queries_logits.float(), size=pixels.shape[-2:], mode="bilinear",
                              align_corners=False)
        found = []
        for i, image in enumerate(images):
            height, width = pixels.shape[-2:]
            if pixel_mask is not None:
                height, width = int(pixel_mask[i].any(dim=1).sum()), int(pixel_mask[i].any(dim=0).sum())
            logits = F.interpolate(masks[i:i + 1, :, :height, :width], size=(image.height, image.width),
                                   mode="bilinear", align_corners=False)[0]
            found.append(instances(out.class_queries_logits[i], logits, self.labels))
        return found

    def classify_colours(self, image: Image.Image, detections: Sequence[Detection], label: str) -> list[str]:
        if self.colours is None:
            raise ValueError("this detector was loaded without a colour model")
        return self.colours(image, detections, label)
