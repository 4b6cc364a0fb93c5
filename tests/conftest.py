"""Shared test settings."""

import os
from pathlib import Path

import pytest

# helpers.py holds assertions shared by the tests: rewrite them as in a test module, so that a
# failure shows the values compared (this must come before any test module imports helpers).
pytest.register_assert_rewrite("helpers")

# Tiny models: thread hand-offs cost far more than the maths on a busy 2-core
# machine (a tiny conv: 0.1 ms on one thread, 20+ ms on two). Subprocesses that
# tests start inherit the environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread_per_process():
    import torch

    torch.set_num_threads(1)
    yield


# Tiny random pipelines of the real diffusers classes, saved once per session
# (tests/tiny_models.py builds them; no downloads).
@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    """Errors as a user sees them (one line), whatever an earlier in-process `prefopt --debug` left set."""
    from prefopt import cli as cli_module

    monkeypatch.setitem(cli_module._state, "debug", False)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    from tiny_models import build_sd

    return build_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    from tiny_models import build_sd

    return build_sd(tmp_path_factory.mktemp("tiny-sd-v"), prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sd_pixel(tmp_path_factory) -> Path:
    from tiny_models import build_sd

    return build_sd(tmp_path_factory.mktemp("tiny-sd-pixel"), pixel=True)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    from tiny_models import build_sdxl

    return build_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_sana(tmp_path_factory) -> Path:
    from tiny_models import build_sana

    return build_sana(tmp_path_factory.mktemp("tiny-sana"))


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    from tiny_models import build_sd3

    return build_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    from tiny_models import build_flux

    return build_flux(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from tiny_models import build_clip

    return build_clip(tmp_path_factory.mktemp("tiny-clip"))
