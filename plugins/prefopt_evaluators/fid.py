"""The ``fid`` evaluator: FID and Inception Score (torch-fidelity), and CLIP-FID, against a reference set.

The reference is a folder of images (e.g. COCO val2014 images for the
captions drawn) or precomputed statistics (a .npz with ``mu`` and
``sigma`` in the feature space asked for, e.g. COCO-30K's). FID and IS are
measures of a whole set: they have no per-image value, so no win rate and no
bootstrap interval; FID needs thousands of images to mean what the papers'
numbers mean (COCO-30K: 30,000).

Why torch-fidelity: it is maintained, its Inception-v3 reproduces the
TensorFlow network the published FID and IS numbers come from (resizing
included), it computes FID, IS and KID from one pass, and its weights can be
given as a local file, so it runs offline. (clean-fid, the other candidate,
has not been released since 2022 and resizes differently from the published
numbers by design.) Both need torchvision.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator

from prefopt.api import RECIPE_PATH, DataError
from prefopt.evaluation import EvalRow, Scores
from prefopt_evaluators.prompt_sets import PromptSetConfig, PromptSetEvaluator


class Fid(PromptSetEvaluator):
    """FID, IS and CLIP-FID of the images drawn for the prompts (e.g. COCO captions)."""

    name = "fid"

    class Config(PromptSetConfig):
        features: list[Literal["inception", "clip"]] = Field(
            default_factory=lambda: ["inception"], min_length=1,
            description="inception: FID and IS (torch-fidelity); clip: CLIP-FID")
        reference_images: str | None = Field(None, description="folder of reference images",
                                             json_schema_extra=RECIPE_PATH)
        reference_statistics: dict[str, str] = Field(
            default_factory=dict, description="precomputed statistics per feature space, e.g. "
                                              "{inception: coco30k_inception.npz} (mu, sigma); instead of a folder",
            json_schema_extra=RECIPE_PATH)
        inception_weights: str | None = Field(
            None, description="torch-fidelity's weights-inception-2015-12-05 file (null: torch-fidelity downloads it)",
            json_schema_extra=RECIPE_PATH)
        clip_model: str = Field("openai/clip-vit-base-patch32", description="CLIP for CLIP-FID: hub id or local dir")
        is_splits: int = Field(10, ge=1, description="Inception Score splits")
        compare_reference: bool = Field(False, description="also score the reference model's images")
        prefix: str = Field("fid", pattern=r"^[A-Za-z0-9_.-]+$", description="metric and file prefix")

        @model_validator(mode="after")
        def _one_reference(self):
            missing = [f for f in self.features if f not in self.reference_statistics]
            if missing and self.reference_images is None:
                raise ValueError(f"give reference_images, or reference_statistics for {', '.join(missing)}")
            return self

    def local_files(self) -> list[str]:
        cfg = self.config
        files = [cfg.reference_statistics[f] for f in cfg.features if f in cfg.reference_statistics]
        if any(f not in cfg.reference_statistics for f in cfg.features):
            files.append(cfg.reference_images)
        if "inception" in cfg.features and cfg.inception_weights:
            files.append(cfg.inception_weights)
        return files

    def check(self) -> None:
        super().check()
        for space in self.config.features:
            if space in self.config.reference_statistics:
                read_statistics(self.config.reference_statistics[space], space)

    def load_scorer(self, device) -> Any:
        from prefopt_evaluators import fid_features as ff

        cfg = self.config
        extractors = {}
        if "inception" in cfg.features:
            extractors["inception"] = ff.InceptionFeatures(cfg.inception_weights, device)
        if "clip" in cfg.features:
            extractors["clip"] = ff.ClipFeatures(cfg.clip_model, device)
        reference = {}
        for space, path in cfg.reference_statistics.items():
            if space in extractors:
                reference[space] = read_statistics(path, space)
        pending = [space for space in extractors if space not in reference]
        if pending:
            paths = ff.read_folder(cfg.reference_images)
            features = {space: [] for space in pending}
            for start in range(0, len(paths), cfg.batch_size):
                images = ff.load_images(paths[start:start + cfg.batch_size])
                for space in pending:
                    features[space].append(self._features(extractors[space], images)[0])
            for space in pending:
                reference[space] = ff.statistics(_stack(features[space]).numpy())
        return extractors, reference

    def _features(self, extractor, images):
        out = extractor(images)
        return out if isinstance(out, tuple) else (out,)

    def score(self, scorer, images: Sequence[Any], rows: Sequence[EvalRow]) -> Scores:
        from prefopt_evaluators import fid_features as ff

        extractors, reference = scorer
        totals: dict[str, float] = {}
        for space, extractor in extractors.items():
            parts = [self._features(extractor, images[s:s + self.config.batch_size])
                     for s in range(0, len(images), self.config.batch_size)]
            mu, sigma = ff.statistics(_stack([p[0] for p in parts]).numpy())
            totals["fid" if space == "inception" else "clip_fid"] = ff.frechet_distance(mu, sigma, *reference[space])
            if space == "inception":
                totals["is"], totals["is_std"] = ff.inception_score(_stack([p[1] for p in parts]),
                                                                    self.config.is_splits)
        return Scores(totals=totals)


INCEPTION_DIM = 2048  # torch-fidelity's pool features, as pytorch-fid and clean-fid write their statistics


def read_statistics(path: str | Path, space: str) -> tuple[np.ndarray, np.ndarray]:
    """Precomputed ``mu`` and ``sigma`` (a .npz as pytorch-fid and clean-fid write them), checked whole:
    a damaged file would otherwise fail, or give a NaN FID, only after training."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"FID reference statistics not found: {path}")
    fix = "expected a .npz with float arrays mu (d,) and sigma (d, d), as pytorch-fid and clean-fid write"
    try:
        # No pickles: a statistics file is data, and unpickling runs whatever code the file holds.
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):  # a .npy: one array, no names
            arrays = {}
        else:
            with data:
                arrays = {name: data[name] for name in ("mu", "sigma") if name in data}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # truncated, not numpy, pickled
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise DataError(f"{path} is not readable FID statistics ({reason}); {fix}") from None
    if set(arrays) != {"mu", "sigma"}:
        raise DataError(f"{path} holds no 'mu' and 'sigma' arrays; {fix}")
    mu, sigma = arrays["mu"], arrays["sigma"]
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise DataError(f"{path}: mu is {mu.dtype} and sigma {sigma.dtype}; {fix}")
    if not (mu.ndim == 1 and mu.size and sigma.shape == (mu.size, mu.size)):
        raise DataError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}; {fix}")
    if space == "inception" and mu.size != INCEPTION_DIM:
        raise DataError(f"{path}: statistics of dimension {mu.size}, but Inception features have {INCEPTION_DIM}; "
                        "give statistics of Inception's pool features")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{path}: mu or sigma holds NaN or infinite values; recompute the statistics")
    return mu, sigma


def _stack(chunks):
    """Feature batches (torch, on the CPU) as one tensor."""
    import torch

    return torch.cat(chunks)
