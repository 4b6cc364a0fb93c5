"""The ``fid`` evaluator: the Fréchet distance and CLIP-FID on the tiny CLIP."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from prefopt.evaluation import EvalRow, score_images
from prefopt_evaluators.fid import Fid
from prefopt_evaluators.fid_features import frechet_distance


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    sigma = a @ a.T + np.eye(6)
    mu = rng.normal(size=6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # Diagonal covariances: ‖Δμ‖² + Σ (s1 + s2 − 2 √(s1 s2)).
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 3.0 + sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(np.zeros(3), np.diag(s1), np.ones(3), np.diag(s2)) == pytest.approx(expected)


def pictures(n: int, colour, seed: int) -> list[Image.Image]:
    """Noisy images around one colour: one 'distribution' per colour."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=float)
    return [Image.fromarray(np.clip(base + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype("uint8"))
            for _ in range(n)]


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco")
    for i, image in enumerate(pictures(12, (200, 40, 40), seed=1)):
        image.save(folder / f"{i:03d}.png")
    return folder


def clip_fid(tiny_clip, reference_folder, images, **settings) -> float:
    config = Fid.Config(features=["clip"], clip_model=str(tiny_clip), reference_images=str(reference_folder),
                        prompts=["a red car"], **settings)
    evaluator = Fid(config)
    rows = [EvalRow("a red car", i) for i in range(len(images))]
    return score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), images, rows).totals["clip_fid"]


def test_clip_fid_orders_a_constructed_case(tiny_clip, reference_folder):
    same = clip_fid(tiny_clip, reference_folder, pictures(12, (200, 40, 40), seed=2))
    other = clip_fid(tiny_clip, reference_folder, pictures(12, (40, 40, 200), seed=2))
    assert math.isfinite(same) and same >= 0
    assert same < other


def test_clip_fid_is_deterministic_batch_independent_and_reads_statistics(tiny_clip, reference_folder, tmp_path):
    images = pictures(9, (120, 120, 40), seed=3)
    values = [clip_fid(tiny_clip, reference_folder, images, batch_size=size) for size in (2, 5, 5)]
    assert values[1] == values[2]
    assert values[0] == pytest.approx(values[1], rel=1e-6)

    from prefopt_evaluators.fid_features import ClipFeatures, load_images, read_folder, statistics

    features = ClipFeatures(str(tiny_clip), torch.device("cpu"))(load_images(read_folder(reference_folder)))
    mu, sigma = statistics(features.numpy())
    np.savez(tmp_path / "reference.npz", mu=mu, sigma=sigma)
    config = Fid.Config(features=["clip"], clip_model=str(tiny_clip), prompts=["a red car"],
                        reference_statistics={"clip": str(tmp_path / "reference.npz")})
    evaluator = Fid(config)
    rows = [EvalRow("a red car", i) for i in range(len(images))]
    from_stats = score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), images, rows).totals["clip_fid"]
    assert from_stats == pytest.approx(values[1], rel=1e-6)


def test_a_reference_is_required():
    with pytest.raises(ValidationError, match="reference_images, or reference_statistics for inception"):
        Fid.Config(prompts=["a"])


def test_a_torch_fidelity_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    """PyPI's torchvision beside a CPU-only torch raises RuntimeError (not ImportError) on import."""
    from prefopt.errors import PrefoptError

    package = tmp_path / "torch_fidelity"
    package.mkdir()
    (package / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms\\ndoes not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "torch_fidelity" or m.startswith("torch_fidelity.")]:
        monkeypatch.delitem(sys.modules, name)
    evaluator = Fid(Fid.Config(prompts=["a"], reference_images=str(tmp_path)))
    with pytest.raises(PrefoptError) as caught:
        evaluator.load_scorer(torch.device("cpu"))
    message = str(caught.value)
    assert "\n" not in message
    assert "'torch_fidelity.feature_extractor_inceptionv3' is installed but fails to import" in message
    assert "RuntimeError: operator torchvision::nms does not exist" in message
