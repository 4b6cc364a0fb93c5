"""A run's recipe.resolved.yaml is read with the recipe loader's guards: damage is one line, never a traceback."""

from __future__ import annotations

import pytest

from helpers import cli, error_lines, write_toy_recipe

FAST = {"pretrain": False, "train": {"max_steps": 2, "checkpoint_every": 1}}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("resolved")
    recipe = write_toy_recipe(directory, **FAST)
    assert cli("run", str(recipe))[0] == 0
    return recipe, directory / "run"


DAMAGE = {
    "self-referring alias": "\nzz: &zz {x: *zz}\n",
    "alias bomb": "\n" + "".join(
        f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]\n" if i else "b0: &b0 [x, x, x, x, x, x, x, x, x]\n"
        for i in range(9)),
    "duplicate key": "\nseed: 5\n",
    "not UTF-8": "\n# \udcff\n",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_resolved_recipe_is_one_line_on_resume(finished_run, damage):
    recipe, run = finished_run
    resolved = run / "recipe.resolved.yaml"
    original = resolved.read_bytes()
    try:
        resolved.write_bytes(original + DAMAGE[damage].encode("utf-8", "surrogateescape"))
        code, err = cli("run", str(recipe), "--resume")
        assert code == 2
        [line] = error_lines(err)
        assert "recipe.resolved.yaml is damaged" in line
        assert "Traceback" not in err
    finally:
        resolved.write_bytes(original)


def test_a_resolved_recipe_without_its_sections_is_refused(finished_run):
    recipe, run = finished_run
    resolved = run / "recipe.resolved.yaml"
    original = resolved.read_bytes()
    try:
        resolved.write_text("backbone: 3\ntrain: {}\n")
        code, err = cli("run", str(recipe), "--resume")
        assert code == 2
        assert "not a resolved recipe" in error_lines(err)[0]
    finally:
        resolved.write_bytes(original)

