"""Every module imports, and the light commands stay light (no torch, diffusers, transformers).

``prefopt --help``, ``validate`` and ``plugins`` read every plugin's Config; if
any plugin imported torch at module top they would take seconds and fail on a
machine without a GPU stack. Each is run in a fresh interpreter, because this
test process has long since imported torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata
from pathlib import Path

import pytest

from fixtures.dists import REPO_ROOT, run_cli
from prefopt.hookspecs import ENTRY_POINT_GROUP

PLUGIN_DIRS = sorted(p for p in (REPO_ROOT / "plugins").glob("prefopt_*") if (p / "__init__.py").is_file())
RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


def _walk(directory: Path, package: str) -> list[str]:
    """Dotted names of a package and every module below it, found without importing."""
    names = [package]
    for info in pkgutil.iter_modules([str(directory)]):
        if info.ispkg:
            names += _walk(directory / info.name, f"{package}.{info.name}")
        else:
            names.append(f"{package}.{info.name}")
    return names


MODULES = _walk(REPO_ROOT / "prefopt", "prefopt") + [
    name for plugin_dir in PLUGIN_DIRS for name in _walk(plugin_dir, plugin_dir.name)
]


def test_found_the_packages():
    assert "prefopt.cli" in MODULES and "prefopt.engine.trainer" in MODULES
    assert {p.name for p in PLUGIN_DIRS} >= {"prefopt_objectives", "prefopt_backbones", "prefopt_pairs"}


@pytest.mark.parametrize("module", MODULES)
def test_module_imports(module):
    importlib.import_module(module)


def test_every_first_party_plugin_package_is_an_entry_point():
    # First-party plugins are found through the same group as third-party
    # ones; a package under plugins/ that is missing from pyproject's
    # entry points would silently never load.
    prefopt = metadata.distribution("prefopt")
    registered = {ep.value.split(".")[0] for ep in prefopt.entry_points if ep.group == ENTRY_POINT_GROUP}
    assert {p.name for p in PLUGIN_DIRS} <= registered


def _assert_light(args: list[str]) -> str:
    code, stdout, stderr, heavy = run_cli(args)
    assert code == 0, stderr
    assert heavy == [], f"`prefopt {' '.join(args)}` imported {heavy}"
    return stdout


def test_help_does_not_import_torch():
    assert "validate" in _assert_light(["--help"])


def test_plugins_does_not_import_torch():
    stdout = _assert_light(["plugins"])
    assert "ddspo" in stdout and "toy2d" in stdout


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_validate_does_not_import_torch(recipe):
    assert "ok" in _assert_light(["validate", str(recipe)])
