"""The heavy half of the ``fid`` evaluator: image features, their statistics, and the distances between them.

Inception-v3 features and the Inception Score come from torch-fidelity (its
Inception is the TensorFlow FID network, ported to match its outputs); CLIP
features for CLIP-FID from a transformers CLIP (clean-fid's ``clip_vit_b_32``
feature space). The Fréchet distance is computed here from the statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from prefopt.errors import DataError, require

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) between two Gaussians.

    tr((Σ1 Σ2)^½) is the sum of the square roots of the eigenvalues of
    Σ1^½ Σ2 Σ1^½, a symmetric positive semi-definite matrix: eigh on it is
    stable where a general matrix square root of Σ1 Σ2 can turn complex.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise DataError(f"reference statistics of dimension {mu2.shape[0]} for features of dimension {mu1.shape[0]}")
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    if features.shape[0] < 2:
        raise DataError("FID needs at least two images on each side")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) ‖ p(y))), mean and std over splits (torch-fidelity's computation)."""
    metric = require("torch_fidelity.metric_isc", "fid")
    out = metric.isc_features_to_metric(logits, splits=splits)
    return out["inception_score_mean"], out["inception_score_std"]


def read_folder(path: str | Path) -> list[Path]:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"FID reference folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise DataError(f"{folder} holds {len(files)} images; FID needs a folder of reference images")
    return files


class InceptionFeatures:
    """torch-fidelity's Inception-v3: 2048-d pool features and logits, from uint8 images of any size."""

    def __init__(self, weights: str | None, device: torch.device):
        module = require("torch_fidelity.feature_extractor_inceptionv3", "fid")
        self.device = device
        self.model = module.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=weights).to(device)

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
                              for im in _same_size(images)])
        pool, logits = self.model(pixels.to(self.device))
        return pool.double().cpu(), logits.double().cpu()


def _same_size(images: Sequence[Image.Image]) -> list[Image.Image]:
    """Images of one batch at the first one's size (the extractor resizes to 299 itself)."""
    size = images[0].size
    return [im if im.size == size else im.resize(size, Image.BICUBIC) for im in images]


class ClipFeatures:
    """Unit image embeddings of a transformers CLIP (CLIP-FID)."""

    def __init__(self, model: str, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        self.model = CLIPModel.from_pretrained(model).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(model)

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(self.device))
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(features.float(), dim=-1).double().cpu()


def load_images(paths: Sequence[Path]) -> list[Image.Image]:
    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                out.append(image.convert("RGB"))
        except OSError as exc:
            raise DataError(f"cannot read reference image {path}: {exc}") from None
    return out
