"""A third-party plugin, installed like any package, is found, validated and trained with.

tests/fixtures/prefopt_example_plugin is a complete plugin distribution. Here it
is "installed" without pip or network: its package and a real ``.dist-info``
(METADATA + entry_points.txt from its pyproject) are written to a temporary
directory, which goes on PYTHONPATH of a fresh interpreter. Entry-point
discovery there is exactly what a ``pip install`` would give, and the venv is
never touched.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.dists import EXAMPLE_PLUGIN, env_with, install_example_plugin, install_source, run_cli
from helpers import metric_rows

TINY_RECIPE = {
    "seed": 0,
    "backbone": {"name": "toy2d", "hidden": 32, "layers": 2, "num_train_timesteps": 100, "sample_steps": 10},
    "pretrain": {
        "pairs": {"source": {"name": "toy2d_points", "points_per_condition": 50}},
        "train": {"max_steps": 20, "batch_size": 64},
    },
    "pairs": {"source": {"name": "toy2d_neighbours"}},
    "objective": {"name": "diffusion_cpo", "beta": 2000, "sft_weight": 0.5},
    "train": {"max_steps": 5, "batch_size": 8},
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install_example_plugin(tmp_path_factory.mktemp("site"))


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_plugins_lists_it_with_its_config(site):
    code, out, err, heavy = run_cli(["plugins"], site)
    assert code == 0, err
    assert "diffusion_cpo  (prefopt_example_plugin.cpo, from prefopt-example-plugin)" in out
    # The one-line description is the class docstring's first line.
    assert "Reference-free CPO: −log σ(−β/2 · (err^w − err^l)) + λ · err^w, no reference model." in out
    assert "ddspo  (prefopt_objectives.ddspo, from prefopt)" in out
    assert "beta: float = 5000.0" in out
    assert "sft_weight: float = 1.0  # λ: weight of the denoising (SFT) term on the winner" in out
    assert "ddspo" in out  # first-party plugins beside it
    assert heavy == []  # the plugin keeps torch out of its module top, as required


def _prefopt_imports(path: Path) -> set[str]:
    """Every prefopt module a Python file imports (at any depth, including inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    # prefopt itself and the first-party plugin packages; the plugin's own package is its business.
    return {name for name in names if name.split(".")[0] == "prefopt"
            or (name.startswith("prefopt_") and not name.startswith("prefopt_example_plugin"))}


def test_the_example_plugin_imports_only_the_public_api(tmp_path):
    files = sorted(EXAMPLE_PLUGIN.rglob("*.py"))
    assert len(files) >= 4  # package, hook module, objective, its tests
    for path in files:
        outside = _prefopt_imports(path) - {"prefopt.api"}
        assert not outside, f"{path.relative_to(EXAMPLE_PLUGIN)} imports {sorted(outside)}: only prefopt.api is public"
    # The check sees a private import, however it is written.
    probe = tmp_path / "probe.py"
    probe.write_text("import prefopt.recipe\ndef f():\n    from prefopt.engine.step import FusedStep\n"
                     "from prefopt_pairs.common import row_seed\n")
    assert _prefopt_imports(probe) == {"prefopt.recipe", "prefopt.engine.step", "prefopt_pairs.common"}


def test_a_plugin_for_another_api_version_is_refused(site, tmp_path):
    future = install_source(
        tmp_path / "future", "prefopt-future-plugin",
        {
            "prefopt_future_plugin/__init__.py": "",
            "prefopt_future_plugin/plugin.py": "PREFOPT_API = 3\n",
        },
        {"future": "prefopt_future_plugin.plugin"},
    )
    for command in (["plugins"], ["validate", str(EXAMPLE_PLUGIN / "recipes" / "toy2d_cpo.yaml")]):
        code, _, err, _ = run_cli(command, site, future)
        line = _one_error_line(code, err)
        assert "prefopt-future-plugin:prefopt_future_plugin.plugin targets prefopt plugin API 3" in line
        assert "provides API 2" in line


def test_a_recipe_using_it_validates(site):
    recipe = EXAMPLE_PLUGIN / "recipes" / "toy2d_cpo.yaml"
    code, out, err, heavy = run_cli(["validate", str(recipe)], site)
    assert code == 0, err
    assert out.strip().endswith(": ok")
    assert heavy == []
    # Its Config is checked like any first-party one.
    code, _, err, _ = run_cli(["validate", str(recipe), "objective.sft_wieght=2"], site)
    assert "did you mean 'sft_weight'" in _one_error_line(code, err)


def test_toy_training_with_its_objective(site, tmp_path):
    recipe = dict(TINY_RECIPE, output_dir=str(tmp_path / "run"))
    path = tmp_path / "cpo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err, _ = run_cli(["run", str(path)], site, cwd=tmp_path)
    assert code == 0, err[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "final").is_dir()
    rows = metric_rows(run_dir)
    assert len(rows) == 5
    first = rows[0]
    # The plugin's own metrics reach the log.
    assert {"loss", "pref/accuracy", "cpo/preference", "mse/student_w"} <= set(first)
    resolved = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    assert resolved["objective"] == {"name": "diffusion_cpo", "beta": 2000.0, "sft_weight": 0.5}


def test_autoload_can_be_disabled(site):
    code, out, err, _ = run_cli(["plugins"], site, PREFOPT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert code == 0, err
    assert "diffusion_cpo" not in out
    assert "ddspo" in out and "toy2d" in out  # first-party plugins still load
    code, _, err, _ = run_cli(
        ["validate", str(EXAMPLE_PLUGIN / "recipes" / "toy2d_cpo.yaml")], site, PREFOPT_DISABLE_PLUGIN_AUTOLOAD="1"
    )
    assert "unknown objective 'diffusion_cpo'" in _one_error_line(code, err)


def test_a_plugin_that_fails_to_import_is_reported(site, tmp_path):
    broken = install_source(
        tmp_path / "broken", "prefopt-broken-plugin",
        {
            "prefopt_broken_plugin/__init__.py": "",
            "prefopt_broken_plugin/plugin.py": 'raise ImportError("prefopt_broken_plugin needs libfrob >= 2")\n',
        },
        {"broken": "prefopt_broken_plugin.plugin"},
    )
    code, _, err, _ = run_cli(["plugins"], site, broken)
    line = _one_error_line(code, err)
    for fragment in ("'broken'", "prefopt-broken-plugin", "prefopt_broken_plugin.plugin",
                     "ImportError", "needs libfrob >= 2"):
        assert fragment in line
    # The documented way out: load only prefopt's own plugins.
    code, out, err, _ = run_cli(["plugins"], site, broken, PREFOPT_DISABLE_PLUGIN_AUTOLOAD="1")
    assert code == 0, err
    assert "ddspo" in out and "diffusion_cpo" not in out


def test_two_distributions_registering_one_objective(site, tmp_path):
    # A second distribution that also claims `diffusion_cpo`.
    clash = install_source(
        tmp_path / "clash", "prefopt-clashing-plugin",
        {
            "prefopt_clashing_plugin/__init__.py": "",
            "prefopt_clashing_plugin/plugin.py": """
                from prefopt.hookspecs import hookimpl
                from prefopt.interfaces import Objective

                PREFOPT_API = 2


                class OtherCPO(Objective):
                    \"\"\"Another objective under the same name.\"\"\"

                    name = "diffusion_cpo"


                @hookimpl
                def prefopt_objectives():
                    return [OtherCPO]
            """,
        },
        {"clash": "prefopt_clashing_plugin.plugin"},
    )
    code, _, err, _ = run_cli(["plugins"], site, clash)
    line = _one_error_line(code, err)
    assert "two plugins register the objective 'diffusion_cpo'" in line
    assert "prefopt-example-plugin" in line and "prefopt-clashing-plugin" in line


def test_the_plugins_own_test_suite_passes_when_installed(site, tmp_path):
    # What a plugin author runs after `pip install -e .`: the fixture's tests,
    # with the fixture's pyproject as pytest's config.
    project = tmp_path / "prefopt_example_plugin"
    shutil.copytree(EXAMPLE_PLUGIN, project, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, env=env_with(site), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "6 passed" in proc.stdout, proc.stdout[-3000:]
