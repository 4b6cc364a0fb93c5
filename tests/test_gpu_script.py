"""docs/scripts/bench/gpu.sh, the one command meant to fill docs/performance.md's GPU rows, runs end to end.

No GPU is at hand where the tests run, so the script's ``--tiny`` mode runs the same `prefopt bench`
commands (the same recipes and overrides) on tiny pipelines of the same classes, every row but those
that compile (inductor needs many minutes on a CPU) and xformers' (a GPU kernel). A recipe field renamed, an override mistyped or a model builder broken shows up here,
not in the few minutes of device time the script gets.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS_RUN_WITH_TINY = ["sd15-lora", "sd15-full", "sdxl-lora", "sana-lora",
                      "sd15-lora-channels-last", "sdxl-full", "sana-full"]


@pytest.mark.slow  # 7 `prefopt bench` runs and 3 model builds: about 5 minutes on a 2-core machine
def test_gpu_script_runs_every_row_on_tiny_pipelines(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "BUDGET": "1200", "ROW_LIMIT": "300", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(ROOT / "docs/scripts/bench/gpu.sh"), "--tiny", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    measured = re.search(r"^measured: (.*)$", done.stdout, re.M).group(1).split()
    assert measured == ROWS_RUN_WITH_TINY
    assert re.search(r"^failed:   none$", done.stdout, re.M)
    rows = (tmp_path / "out" / "bench.md").read_text()
    for name in ROWS_RUN_WITH_TINY:  # each row timed both steps, into the one rows file
        lines = [line for line in rows.splitlines() if f"/run-{name} " in line]
        assert [kind for kind in ("fused", "naive") for line in lines if f"| {kind} |" in line] == ["fused", "naive"]
