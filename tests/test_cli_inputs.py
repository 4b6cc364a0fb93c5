"""Hostile input to the CLI's own checks: a damaged pair-dataset record, a working directory deleted under it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ENV, cli, cli_outputs, one_error


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


def test_ctrl_c_inside_a_command_says_interrupted_and_exits_130(monkeypatch):
    """click, run without standalone mode, hands a KeyboardInterrupt back as the code 130: it exited 0, silently."""
    import prefopt.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(prefopt.cli, "_registry", interrupted)
    code, _, err = cli_outputs("plugins")
    assert (code, err.strip()) == (130, "interrupted")


def test_a_real_sigint_to_a_running_command_exits_130(tmp_path):
    import signal
    import time

    script = ("import time, prefopt.cli\n"
              "def slow():\n    print('started', flush=True)\n    time.sleep(60)\n"
              "prefopt.cli._registry = slow\nimport sys\nsys.argv = ['prefopt', 'plugins']\nprefopt.cli.main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err.strip().splitlines()[-1]) == (130, "interrupted")
