"""`prefopt run RECIPE --dry-run` works offline for every shipped recipe and loads nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RECIPES = sorted(Path(__file__).resolve().parent.parent.joinpath("recipes").glob("*.yaml"))

DRIVER = """
import sys
from prefopt.cli import main
sys.argv = ["prefopt", "run", sys.argv[1], "--dry-run"]
try:
    main()
finally:
    heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
    print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_dry_run_prints_the_plan_offline_without_loading(recipe, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(recipe)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = yaml.safe_load(done.stdout)["plan"]
    assert plan["backbone"]["name"] == yaml.safe_load(recipe.read_text())["backbone"]["name"]
    assert plan["train"]["max_steps"] >= 0
    # Nothing was loaded: no model library was even imported.
    assert "HEAVY:\n" in done.stderr or done.stderr.strip().endswith("HEAVY:")
    assert not list(tmp_path.iterdir())  # and nothing was written
