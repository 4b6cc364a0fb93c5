"""`prefopt export` and `prefopt push` on bad input: what they may replace, what final/ they read, what they leave.

Every refusal is one `error:` line, exit code 2, and leaves the files it names as they were.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from helpers import cli, one_error

# The tiny LoRA run (sealed final/ with its card) and the stand-in for HfApi's network calls.
from test_sharing import RUN_ID, FakeHub, base, lora_run  # noqa: F401 - base and lora_run are fixtures

from prefopt import checksums

LORA = "pytorch_lora_weights.safetensors"


@pytest.fixture
def run(lora_run, tmp_path):
    """A copy of the LoRA run this test may damage."""
    copy = tmp_path / "run"
    shutil.copytree(lora_run, copy)
    return copy


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def user_dir(path: Path, marker: str = "keep.txt") -> Path:
    """A directory of the user's, holding a file that must survive."""
    path.mkdir(parents=True, exist_ok=True)
    (path / marker).write_text("the user's")
    return path


# ---------------------------------------------------------------------------- export: what --overwrite replaces


def test_kohya_overwrite_never_replaces_a_directory(run, tmp_path):
    target = user_dir(tmp_path / "some_dir")
    code, err = cli("export", run, "--to", "kohya", "--output", target, "--overwrite")
    one_error(code, err, "not a regular file", "some_dir")
    assert (target / "keep.txt").read_text() == "the user's"


def test_kohya_overwrite_replaces_a_file(run, tmp_path):
    out = tmp_path / "lora.safetensors"
    out.write_bytes(b"an older export")
    code, err = cli("export", run, "--to", "kohya", "--output", out, "--overwrite")
    assert code == 0, err
    with safe_open(str(out), "pt") as handle:
        assert all(key.startswith("lora_unet_") for key in handle.keys())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("to", ["kohya", "merged"])
def test_export_refuses_the_working_directory_and_what_holds_it(run, tmp_path, monkeypatch, to):
    work = user_dir(tmp_path / "parent" / "work")
    (work / "model_index.json").write_text("{}")  # even a directory that looks like an export
    (work.parent / "model_index.json").write_text("{}")
    monkeypatch.chdir(work)
    for output in (".", "..", str(work)):
        code, err = cli("export", run, "--to", to, "--output", output, "--overwrite")
        one_error(code, err)
        assert (work / "keep.txt").read_text() == "the user's"


def test_merged_overwrite_refuses_the_home_directory(run, tmp_path, monkeypatch):
    home = user_dir(tmp_path / "home")
    (home / "model_index.json").write_text("{}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    code, err = cli("export", run, "--to", "merged", "--output", home, "--overwrite")
    one_error(code, err, "home")
    assert (home / "keep.txt").read_text() == "the user's"


def test_merged_overwrite_replaces_only_a_previous_export(run, tmp_path):
    other = user_dir(tmp_path / "not_an_export")
    code, err = cli("export", run, "--to", "merged", "--output", other, "--overwrite")
    one_error(code, err, "not one", "model_index.json")
    assert (other / "keep.txt").read_text() == "the user's"

    afile = tmp_path / "a_file"
    afile.write_bytes(b"the user's")
    code, err = cli("export", run, "--to", "merged", "--output", afile, "--overwrite")
    one_error(code, err, "not a directory")
    assert afile.read_bytes() == b"the user's"

    out = tmp_path / "merged"
    assert cli("export", run, "--to", "merged", "--output", out)[0] == 0
    (out / "stale.txt").write_text("from the old export")
    code, err = cli("export", run, "--to", "merged", "--output", out, "--overwrite")
    assert code == 0, err
    assert (out / "model_index.json").is_file() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_export_never_writes_into_final_or_over_the_run(run, tmp_path):
    code, err = cli("export", run, "--to", "kohya", "--output", run / "final" / "lora.safetensors")
    one_error(code, err, "final/")
    code, err = cli("export", run, "--to", "merged", "--output", run, "--overwrite")
    one_error(code, err, "holds the run")
    checksums.verify(run / "final", "trained weights", "", run_id=RUN_ID)  # still whole


def test_merged_overwrite_never_replaces_the_base_model(run, base, tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    path = run / "recipe.resolved.yaml"
    recipe = yaml.safe_load(path.read_text())
    recipe["backbone"]["pretrained"] = str(copy)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    before = snapshot(copy)
    code, err = cli("export", run, "--to", "merged", "--output", copy, "--overwrite")
    one_error(code, err, "base model")
    assert snapshot(copy) == before


def test_export_refuses_a_symbolic_link(run, tmp_path):
    target = user_dir(tmp_path / "elsewhere")
    link = tmp_path / "link"
    link.symlink_to(target)
    code, err = cli("export", run, "--to", "merged", "--output", link, "--overwrite")
    one_error(code, err, "symbolic link")
    assert (target / "keep.txt").read_text() == "the user's" and link.is_symlink()


def test_kohya_export_of_run_dot(run, monkeypatch):
    monkeypatch.chdir(run)
    code, err = cli("export", ".", "--to", "kohya")
    assert code == 0, err
    assert (run / "export" / "run_kohya.safetensors").is_file()  # named after the directory, not ""


# ---------------------------------------------------------------------------- export and push: final/ verified


def _unseal(run: Path) -> None:
    (run / "final" / "integrity.json").unlink()


def _flip_a_byte(run: Path) -> None:
    path = run / "final" / LORA
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(run: Path) -> None:
    path = run / "final" / LORA
    path.write_bytes(path.read_bytes()[:100])


def _unseal_and_flip(run: Path) -> None:  # the weights then fail to load: refused first, in one line
    _unseal(run)
    _flip_a_byte(run)


DAMAGES = {"unsealed": (_unseal, "integrity.json"), "unsealed_flipped": (_unseal_and_flip, "integrity.json"),
           "flipped": (_flip_a_byte, "damaged"), "truncated": (_truncate, "damaged")}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("to", ["kohya", "merged"])
def test_export_refuses_an_unsealed_or_damaged_final(run, tmp_path, damage, to):
    spoil, word = DAMAGES[damage]
    spoil(run)
    out = tmp_path / "out"
    code, err = cli("export", run, "--to", to, "--output", out)
    one_error(code, err, word, "prefopt run RECIPE --resume")
    assert not out.exists()


@pytest.mark.parametrize("damage", DAMAGES)
def test_push_refuses_an_unsealed_or_damaged_final(run, monkeypatch, damage):
    hub = FakeHub(monkeypatch)
    spoil, word = DAMAGES[damage]
    spoil(run)
    code, err = cli("push", run, "--repo-id", "someone/model")
    one_error(code, err, word)
    assert hub.calls == []


# ---------------------------------------------------------------------------- export: the resolved recipe


@pytest.mark.parametrize("key, value, words", [
    ("pretrained", None, "backbone.pretrained is missing"),
    ("pretrained", ["a", "list"], "backbone.pretrained is not a name or path"),
    ("revision", 3, "backbone.revision is not a name or path"),
    ("vae_pretrained", {"a": 1}, "backbone.vae_pretrained is not a name or path"),
])
def test_merged_export_names_a_damaged_backbone_section(run, tmp_path, key, value, words):
    path = run / "recipe.resolved.yaml"
    recipe = yaml.safe_load(path.read_text())
    if value is None:
        del recipe["backbone"][key]
    else:
        recipe["backbone"][key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    code, err = cli("export", run, "--to", "merged", "--output", tmp_path / "out")
    one_error(code, err, words, "recipe.resolved.yaml")


# ---------------------------------------------------------------------------- push leaves the run as it was


def test_failed_push_leaves_final_byte_identical(run, monkeypatch):
    from prefopt.locking import is_lock_file

    def names():  # the lock files push holds the run with are never content of it
        return sorted(p.name for p in run.iterdir() if not is_lock_file(p.name))

    before, names_before = snapshot(run / "final"), names()
    FakeHub(monkeypatch, fail=ConnectionError("Failed to resolve 'huggingface.co'"))
    code, err = cli("push", run, "--repo-id", "someone/model")
    one_error(code, err, "push to someone/model failed")
    assert snapshot(run / "final") == before
    assert names() == names_before  # nothing staged in the run either


def test_push_uploads_a_verifiable_final_and_changes_nothing_here(run, monkeypatch, tmp_path):
    before = snapshot(run / "final")
    hub = FakeHub(monkeypatch)
    code, err = cli("push", run, "--repo-id", "someone/model")
    assert code == 0, err
    assert snapshot(run / "final") == before  # the local card keeps naming the local final/
    assert b'model = "someone/model"' in hub.uploaded["README.md"]
    assert hub.uploaded["README.md"] != before["README.md"]
    # What the Hub holds verifies as prefopt's final/ of this run (prefopt eval --weights on a download).
    download = tmp_path / "download"
    for name, data in hub.uploaded.items():
        (download / name).parent.mkdir(parents=True, exist_ok=True)
        (download / name).write_bytes(data)
    checksums.verify(download, "trained weights", "", run_id=RUN_ID)


def test_export_refuses_a_link_planted_at_its_default_directory(run, tmp_path):
    elsewhere = user_dir(tmp_path / "elsewhere")
    (run / "export").symlink_to(elsewhere)
    code, err = cli("export", run, "--to", "kohya")
    one_error(code, err, str(run / "export"), "symbolic link")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


def test_a_link_at_the_old_guessable_temporary_name_is_never_written_through(run, tmp_path):
    import os

    elsewhere = user_dir(tmp_path / "elsewhere")
    (tmp_path / f".merged.tmp-{os.getpid()}").symlink_to(elsewhere)
    code, err = cli("export", run, "--to", "merged", "--output", tmp_path / "merged")
    assert code == 0, err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert (tmp_path / "merged" / "model_index.json").is_file() and not (tmp_path / "merged").is_symlink()


# ---------------------------------------------------------------------------- export and push hold the run


@pytest.mark.parametrize("command", [("export", "--to", "kohya"), ("push", "--repo-id", "someone/model")])
def test_export_and_push_wait_for_no_run_but_refuse_a_held_one(run, monkeypatch, command):
    """A `prefopt run --overwrite` of the same directory could clear final/ under them: they hold the run, as eval does."""
    from test_run_dir_safety import start_holder, stop

    hub = FakeHub(monkeypatch)
    before = snapshot(run / "final")
    holder = start_holder(run)
    try:
        code, err = cli(command[0], run, *command[1:])
        one_error(code, err, str(run), "in use by another prefopt command", f"pid {holder.pid}")
    finally:
        stop(holder)
    assert hub.calls == [] and not (run / "export").exists()
    assert snapshot(run / "final") == before


@pytest.mark.parametrize("command", [("export", "--to", "kohya"), ("push", "--repo-id", "someone/model")])
def test_export_and_push_of_a_missing_run_create_nothing(tmp_path, command):
    missing = tmp_path / "no-such-run"
    code, err = cli(command[0], missing, *command[1:])
    one_error(code, err, str(missing), "has no final/")
    assert not missing.exists()
