"""Nothing outside output_dir is touched through what someone put inside it, and --overwrite clears only a run.

Found by an attacker pass: a symbolic link planted as a lock file or as a stage
directory had prefopt write through it (another run's reference retrained, any
file overwritten with a lock record); ``--overwrite`` deleted the recipe being
run when it lay in output_dir; ``prefopt bench``'s rows made output_dir "not
empty" and --overwrite deleted them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import FINAL, cli, one_error, write_toy_recipe
from prefopt.errors import PrefoptError
from prefopt.locking import LOCK, LOCK_FILES, RANKS, hold

FAST = {"pretrain": False, "train": {"max_steps": 4, "checkpoint_every": 2}}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links followed) and its sha256: what must not change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ lock files

@pytest.mark.parametrize("name", LOCK_FILES)
def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    run_dir = tmp_path / "s1"
    run_dir.mkdir()
    (run_dir / name).symlink_to(victim)
    with pytest.raises(PrefoptError, match=f"lock file {run_dir / name} is a symbolic link"):
        with hold(run_dir):
            pass
    assert victim.read_text() == "keep me"


def test_a_dangling_lock_symlink_creates_nothing_where_it_points(tmp_path):
    run_dir, target = tmp_path / "s1", tmp_path / "elsewhere" / "created-by-prefopt"
    run_dir.mkdir()
    target.parent.mkdir()
    (run_dir / RANKS).symlink_to(target)
    with pytest.raises(PrefoptError, match="is a symbolic link"):
        with hold(run_dir, "pair dataset"):
            pass
    assert not target.exists()


def test_a_lock_file_hard_linked_to_another_file_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    run_dir = tmp_path / "s1"
    run_dir.mkdir()
    os.link(victim, run_dir / LOCK)  # the same file under a second name: writing one writes the other
    with pytest.raises(PrefoptError, match="has other hard links"):
        with hold(run_dir, "comparison directory"):
            pass
    assert victim.read_text() == "keep me"


def test_a_lock_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / LOCK)
    with pytest.raises(PrefoptError, match="is not a regular file"):
        with hold(tmp_path):
            pass


def test_prefopt_run_refuses_a_symlinked_lock_in_one_line(tmp_path):
    victim = tmp_path / "x" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    recipe = write_toy_recipe(tmp_path, tmp_path / "s1", **FAST)
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / LOCK).symlink_to(victim)
    one_error(*cli("run", recipe), str(tmp_path / "s1" / LOCK), "symbolic link", "rm ")
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == [LOCK]


def test_plain_lock_files_still_work(tmp_path):
    with hold(tmp_path):
        pass
    with hold(tmp_path):  # the files left by the first hold are taken again
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(LOCK_FILES)
    assert all(not (tmp_path / n).is_symlink() and (tmp_path / n).stat().st_nlink == 1 for n in LOCK_FILES)


# ---------------------------------------------------------------------- stage directories

def pretraining_recipe(directory: Path, output_dir: Path | None = None, pretrain_steps: int = 5) -> Path:
    """A toy recipe with a short pretraining stage (the reference only has to exist) and 2 steps after it."""
    recipe = write_toy_recipe(directory, output_dir, train={"max_steps": 2, "checkpoint_every": 0})
    data = yaml.safe_load(recipe.read_text())
    data["pretrain"]["train"]["max_steps"] = pretrain_steps
    recipe.write_text(yaml.safe_dump(data))
    return recipe


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A finished toy run with a pretrained reference/: the recipe that made it."""
    recipe = pretraining_recipe(tmp_path_factory.mktemp("r1"))
    code, err = cli("run", recipe)
    assert code == 0, err
    return recipe


def linked_reference(pretrained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """k3/ whose reference is a link to sref/, a copy of another run's reference: (k3, sref)."""
    sref, k3 = tmp_path / "sref", tmp_path / "k3"
    shutil.copytree(pretrained.parent / "run" / "reference", sref, symlinks=True)
    k3.mkdir()
    (k3 / "reference").symlink_to(sref)
    return k3, sref


@pytest.mark.parametrize("pretrain_steps", [5, 7])  # the same settings (reused) and other ones (retrained)
def test_a_symlinked_reference_is_refused_and_its_target_untouched(pretrained, tmp_path, pretrain_steps):
    k3, sref = linked_reference(pretrained, tmp_path)
    before = tree_digest(sref)
    recipe = pretraining_recipe(tmp_path, k3, pretrain_steps)
    for command in ("run", "pairs"):
        args = [command, recipe] if command == "run" else ["pairs", "build", recipe]
        one_error(*cli(*args), str(k3 / "reference"), "symbolic link", str(sref))
    assert tree_digest(sref) == before
    assert (k3 / "reference").is_symlink()


def test_overwrite_removes_a_symlinked_reference_not_what_it_points_to(pretrained, tmp_path):
    k3, sref = linked_reference(pretrained, tmp_path)
    before = tree_digest(sref)
    recipe = pretraining_recipe(tmp_path, k3, 7)
    code, err = cli("run", recipe, "--overwrite")
    assert code == 0, err
    assert tree_digest(sref) == before
    assert not (k3 / "reference").is_symlink() and (k3 / "reference" / FINAL).is_file()


def test_a_link_inside_a_reference_is_refused(pretrained, tmp_path):
    """reference/ itself is real, its checkpoints/ lead elsewhere: a resumed stage would write there."""
    run = tmp_path / "run"
    shutil.copytree(pretrained.parent / "run", run)
    outside = tmp_path / "outside"
    outside.mkdir()
    checkpoints = run / "reference" / "checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.symlink_to(outside)
    recipe = pretraining_recipe(tmp_path, run, 5)
    one_error(*cli("run", recipe, "--resume"), str(checkpoints), "symbolic link")
    one_error(*cli("pairs", "build", recipe), str(checkpoints), "symbolic link")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", ["pairs", "metrics.jsonl", "checkpoints"])
def test_resume_refuses_a_link_in_the_run_directory(tmp_path, name):
    recipe = write_toy_recipe(tmp_path, **FAST)
    assert cli("run", recipe)[0] == 0
    run = tmp_path / "run"
    moved = tmp_path / f"moved-{name}"
    os.replace(run / name, moved)
    (run / name).symlink_to(moved)
    before = tree_digest(moved) if moved.is_dir() else moved.read_bytes()
    one_error(*cli("run", recipe, "--resume"), str(run / name), "symbolic link")
    assert (tree_digest(moved) if moved.is_dir() else moved.read_bytes()) == before


def test_a_fresh_run_refuses_a_symlinked_pairs_dir_and_overwrite_removes_only_the_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / "pairs").symlink_to(elsewhere)
    recipe = write_toy_recipe(tmp_path, **FAST)
    one_error(*cli("run", recipe), str(run / "pairs"), "symbolic link")
    code, err = cli("run", recipe, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert (run / "pairs").is_dir() and not (run / "pairs").is_symlink()


def test_a_stale_final_tmp_link_is_removed_not_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    recipe = write_toy_recipe(tmp_path, **FAST)
    assert cli("run", recipe)[0] == 0
    (tmp_path / "run" / ".final.tmp").symlink_to(outside)
    one_error(*cli("run", recipe, "--resume"), ".final.tmp", "symbolic link")
    code, err = cli("run", recipe, "--overwrite")  # --overwrite clears it, as a link
    assert code == 0, err
    assert list(outside.iterdir()) == []


def test_a_failed_removal_is_one_line_not_ignored(pretrained, tmp_path, monkeypatch):
    """A reference that must be retrained but will not go is named, never trained into half-removed."""
    run = tmp_path / "run"
    shutil.copytree(pretrained.parent / "run", run)
    recipe = pretraining_recipe(tmp_path, run, 7)
    real = shutil.rmtree

    def refuse(path, *args, **kwargs):
        if Path(path) == run / "reference":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", refuse)
    one_error(*cli("pairs", "build", recipe), "could not remove", str(run / "reference"), "Permission denied")


# -------------------------------------------------------------------------------- --overwrite

def test_overwrite_never_deletes_the_recipe_being_run(tmp_path):
    exp = tmp_path / "exp"
    recipe = write_toy_recipe(exp, exp, **FAST)  # exp/recipe.yaml, output_dir exp
    (exp / "prompts.txt").write_text("a prompt beside the recipe\n")
    text = recipe.read_text()
    one_error(*cli("run", recipe), "not empty", "'prompts.txt' and 1 other entry")
    one_error(*cli("run", recipe, "--overwrite"), "--overwrite would delete", str(recipe), "the recipe being run")
    assert recipe.read_text() == text
    assert (exp / "prompts.txt").exists()


def test_overwrite_never_deletes_a_file_the_recipe_reads(tmp_path):
    run = tmp_path / "run"
    prompts = run / "inputs" / "prompts.txt"
    prompts.parent.mkdir(parents=True)
    prompts.write_text("a red cube\na blue ball\n")
    recipe = write_toy_recipe(tmp_path, run, **FAST)
    data = yaml.safe_load(recipe.read_text())
    data["pairs"] = {"source": {"name": "random_removal"}, "prompts": {"path": str(prompts)}}
    recipe.write_text(yaml.safe_dump(data))
    one_error(*cli("run", recipe, "--overwrite"), "--overwrite would delete", str(prompts),
              "pairs.prompts.path")
    assert prompts.exists()


def test_not_empty_names_how_many_entries(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (run / name).write_text(name)
    recipe = write_toy_recipe(tmp_path, **FAST)
    one_error(*cli("run", recipe), "(it holds 'a.txt' and 2 other entries)")


# ------------------------------------------------------------------------------ bench rows

def test_bench_rows_do_not_belong_to_a_run(tmp_path):
    recipe = write_toy_recipe(tmp_path, **FAST)
    run = tmp_path / "run"
    assert cli("bench", recipe, "--steps", "1", "--no-generation")[0] == 0
    assert cli("bench", recipe, "--data", "--steps", "0", "--pairs", "256")[0] == 0
    rows = {name: (run / name).read_text() for name in ("bench.md", "bench-data.md")}
    code, err = cli("run", recipe)  # the rows do not make output_dir "not empty"
    assert code == 0, err
    code, err = cli("run", recipe, "--overwrite")  # and --overwrite keeps them
    assert code == 0, err
    assert {name: (run / name).read_text() for name in rows} == rows


@pytest.mark.parametrize("planted", ["seed-0", "seed-0/pairs"])
def test_compare_refuses_a_link_where_a_seed_shares_its_reference_and_pairs(tmp_path, planted):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "cmp"
    (root / planted).parent.mkdir(parents=True, exist_ok=True)
    (root / planted).symlink_to(elsewhere)
    recipe = write_toy_recipe(tmp_path, root, **FAST, compare={"variants": {"ddspo": {}}, "seeds": [0]})
    one_error(*cli("compare", recipe), str(root / planted), "symbolic link")
    assert list(elsewhere.iterdir()) == []



@pytest.mark.parametrize("store", ["wandb", "tensorboard"])
def test_links_a_tracker_made_in_its_own_store_are_not_refused(tmp_path, store):
    """wandb links latest-run and its logs (into ~/.cache) inside its store, in the run and in the pretraining
    stage's reference/: the run is still reused, rerun and resumed. The store being a link is still refused."""
    recipe = pretraining_recipe(tmp_path)
    assert cli("run", recipe)[0] == 0
    run, cache = tmp_path / "run", tmp_path / "cache"
    cache.mkdir()
    for stage in (run, run / "reference"):
        (stage / store / "offline-run-1").mkdir(parents=True, exist_ok=True)
        (stage / store / "latest-run").symlink_to("offline-run-1")
        (stage / store / "offline-run-1" / "debug.log").symlink_to(cache)
    code, err = cli("run", recipe, "--overwrite")  # reuses reference/, whose store holds links
    assert code == 0, err
    assert "Traceback" not in err
    shutil.rmtree(run / store, ignore_errors=True)  # --overwrite cleared the run's own store
    (run / store).symlink_to(cache)
    one_error(*cli("run", recipe, "--resume"), str(run / store), "symbolic link")


# ------------------------------------------------------------------------------ a user's pairs.dir

def _pairs_dir_recipe(tmp_path: Path, pairs_dir: Path) -> Path:
    recipe = write_toy_recipe(tmp_path, **FAST)
    data = yaml.safe_load(recipe.read_text())
    data["pairs"]["dir"] = str(pairs_dir)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    return recipe


def test_a_users_pairs_dir_holding_other_files_is_refused_and_left_as_it_was(tmp_path):
    """Its metadata.jsonl and backbone.json were overwritten by the build's files of the same names."""
    pairs = tmp_path / "my-folder"
    pairs.mkdir()
    (pairs / "metadata.jsonl").write_text("the user's")
    before = tree_digest(pairs)
    one_error(*cli("pairs", "build", _pairs_dir_recipe(tmp_path, pairs)), str(pairs), "not a pair dataset",
              "metadata.jsonl")
    assert tree_digest(pairs) == before


@pytest.mark.parametrize("where", ["the run's pairs/", "inside a user's pairs.dir"])
def test_pairs_build_never_writes_through_a_link_where_the_pairs_go(tmp_path, where):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if where == "the run's pairs/":
        (tmp_path / "run").mkdir()
        link, recipe = tmp_path / "run" / "pairs", write_toy_recipe(tmp_path, **FAST)
    else:
        (tmp_path / "pairs").mkdir()
        link, recipe = tmp_path / "pairs" / "shards", _pairs_dir_recipe(tmp_path, tmp_path / "pairs")
    link.symlink_to(elsewhere)
    one_error(*cli("pairs", "build", recipe), str(link), "symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_a_users_pairs_dir_that_is_a_link_to_an_empty_directory_is_built_and_reused(tmp_path):
    disk = tmp_path / "big-disk" / "pairs"
    disk.mkdir(parents=True)
    (tmp_path / "pairs").symlink_to(disk)
    recipe = _pairs_dir_recipe(tmp_path, tmp_path / "pairs")
    for _ in range(2):  # built, then reused
        code, err = cli("pairs", "build", recipe)
        assert code == 0, err
    assert (disk / "manifest.json").is_file()
