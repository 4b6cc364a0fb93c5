"""Hostile input to the CLI's own checks: a damaged pair-dataset record, a working directory deleted under it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ENV, cli, one_error


@pytest.mark.parametrize("made_with", [
    {"backbone": 5, "config": {}},
    {"backbone": ["toy2d"], "config": {}},
    {"backbone": {"name": "toy2d"}, "config": {}},
    {"backbone": "toy2d", "config": [1, 2]},
    {"backbone": "toy2d", "config": None},
])
def test_a_backbone_record_of_the_wrong_types_is_one_line_for_pairs_show(tmp_path, made_with):
    """backbone.json is read before anything else of the dataset: a name that is not a string (or a config that
    is not a mapping) is named as damage, not a TypeError from the plugin lookup."""
    record = tmp_path / "pairs" / "backbone.json"
    record.parent.mkdir()
    record.write_text(json.dumps(made_with))
    line = one_error(*cli("pairs", "show", record.parent), f"{record} is damaged", "pass --recipe")
    assert "backbone name and a config mapping" in line


def test_a_deleted_working_directory_is_one_line(tmp_path):
    """torch's first import in a deleted directory aborts the process (oneMKL) without an error line:
    the CLI says what happened before it imports anything heavy."""
    script = 'mkdir "$1" && cd "$1" && rmdir "$1" && shift && exec "$@"'
    gone = tmp_path / "gone"
    for args in (["--help"], ["plugins"]):
        proc = subprocess.run(["sh", "-c", script, "sh", str(gone), sys.executable, "-c",
                               "from prefopt.cli import main; main()", *args],
                              capture_output=True, text=True, env=ENV, timeout=300)
        one_error(proc.returncode, proc.stderr,
                  "the working directory no longer exists; cd to an existing directory")
        assert proc.stdout == ""
