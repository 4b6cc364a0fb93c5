"""The ``fid`` evaluator: the Fréchet distance, CLIP-FID on the tiny CLIP, and FID/IS on torch-fidelity's Inception."""

from __future__ import annotations

import importlib
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


@pytest.mark.parametrize("failure, reported", [
    # PyPI's torchvision beside a CPU-only torch raises RuntimeError (not ImportError) on import.
    ('raise RuntimeError("operator torchvision::nms\\ndoes not exist")',
     "RuntimeError: operator torchvision::nms does not exist"),
    # torch-fidelity installed without torchvision: an ImportError, but installing the extra is not the fix.
    ("import torchvision_that_is_not_installed", "ModuleNotFoundError: No module named 'torchvision_that_is_not"),
])
def test_a_torch_fidelity_that_fails_to_import_is_one_line(failure, reported, tmp_path, monkeypatch):
    from prefopt.errors import MissingDependencyError, PrefoptError

    package = tmp_path / "torch_fidelity"
    package.mkdir()
    (package / "__init__.py").write_text(failure + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "torch_fidelity" or m.startswith("torch_fidelity.")]:
        monkeypatch.delitem(sys.modules, name)
    evaluator = Fid(Fid.Config(prompts=["a"], reference_images=str(tmp_path)))
    with pytest.raises(PrefoptError) as caught:
        evaluator.load_scorer(torch.device("cpu"))
    message = str(caught.value)
    assert not isinstance(caught.value, MissingDependencyError)
    assert "\n" not in message
    assert "'torch_fidelity.feature_extractor_inceptionv3' is installed but fails to import" in message
    assert reported in message


# ------------------------------------------------------------------ Inception: FID and IS through torch-fidelity

def torch_fidelity_imports() -> bool:
    try:
        importlib.import_module("torch_fidelity")
    except Exception:  # noqa: BLE001 - missing, or broken by a torchvision built for another torch
        return False
    return True


needs_torch_fidelity = pytest.mark.skipif(
    not torch_fidelity_imports(),
    reason="torch-fidelity does not import here: it needs a torchvision built for the installed torch "
           "(docs/evaluation.md says how these tests were run)")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Random weights of torch-fidelity's Inception-v3, its real layers and shapes, saved as its weights file is."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # The extractor builds its layers and loads its weights in __init__: build it around an empty load.
    with mock.patch("torch.load", return_value={}), mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    torch.manual_seed(0)
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")  # keeps the activations' scale through its ReLUs
    torch.nn.init.normal_(network.fc.weight, std=0.5)  # logits of about ±5: p(y|x) neither flat nor one-hot
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(network.state_dict(), path)
    return path


def save_pictures(folder, images) -> None:
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")


def inception_evaluator(weights, reference_folder, **settings) -> Fid:
    return Fid(Fid.Config(features=["inception"], inception_weights=str(weights), reference_images=str(reference_folder),
                          prompts=["a red car"], is_splits=3, **settings))


@pytest.mark.slow  # ~45 s: 24 Inception-v3 passes on 2 CPU cores
@needs_torch_fidelity
def test_fid_and_is_equal_torch_fidelitys_own_computation(inception_weights, reference_folder, tmp_path):
    """The evaluator (our image handling, batching and Fréchet distance) against torch-fidelity's calculate_metrics."""
    import torch_fidelity

    drawn = pictures(12, (200, 40, 40), seed=2)
    save_pictures(tmp_path / "drawn", drawn)
    evaluator = inception_evaluator(inception_weights, reference_folder, batch_size=5)
    rows = [EvalRow("a red car", i) for i in range(len(drawn))]
    ours = score_images(evaluator, evaluator.load_scorer(torch.device("cpu")), drawn, rows).totals
    theirs = torch_fidelity.calculate_metrics(
        input1=str(tmp_path / "drawn"), input2=str(reference_folder), fid=True, isc=True, isc_splits=3,
        feature_extractor_weights_path=str(inception_weights), cuda=False, cache=False, save_cpu_ram=True,
        verbose=False)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["is"] == pytest.approx(theirs["inception_score_mean"], rel=1e-5)
    assert ours["is_std"] == pytest.approx(theirs["inception_score_std"], rel=1e-4, abs=1e-7)
    # A random network's p(y|x) barely varies between images (here IS = 1.0021), but more than round-off.
    assert ours["is"] > 1.001


@pytest.mark.slow  # ~70 s: 48 Inception-v3 passes
@needs_torch_fidelity
def test_inception_fid_orders_a_constructed_case_and_ignores_batching(inception_weights, reference_folder):
    scorer = inception_evaluator(inception_weights, reference_folder).load_scorer(torch.device("cpu"))

    def totals(images, batch_size):
        evaluator = inception_evaluator(inception_weights, reference_folder, batch_size=batch_size)
        return score_images(evaluator, scorer, images, [EvalRow("a red car", i) for i in range(len(images))]).totals

    like = pictures(12, (200, 40, 40), seed=2)
    unlike = pictures(12, (40, 40, 200), seed=2)
    one, five, again = totals(like, 1), totals(like, 5), totals(like, 5)
    assert five == again
    assert one == pytest.approx(five, rel=1e-4)  # float32 convolutions sum in another order per batch
    assert all(math.isfinite(v) for v in five.values()) and five["fid"] >= 0
    assert five["fid"] < totals(unlike, 5)["fid"]
