"""Every user mistake: exit code 2, one ``error:`` line on stderr, no traceback (unless --debug).

Most cases call ``prefopt.cli.main()`` in-process (fast). Plugin failures are
made with real distributions: a dist-info + package in a temporary directory
put on sys.path, which importlib.metadata discovers like any installed plugin.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from fixtures.dists import install_source, run_cli
from helpers import cli_outputs
from prefopt import cli as cli_module
from prefopt.cli import main
from prefopt.errors import PluginError, PrefoptError
from prefopt.hookspecs import hookimpl
from prefopt.interfaces import Objective, PluginConfig
from prefopt.registry import PluginRegistry

# A small but complete recipe; each case breaks one thing in it.
BASE = {
    "seed": 0,
    "output_dir": "runs/cli-errors",
    "backbone": {"name": "toy2d", "hidden": 32, "layers": 2},
    "pairs": {"source": {"name": "toy2d_neighbours"}},
    "objective": {"name": "ddspo", "beta": 2000},
    "train": {"max_steps": 5, "batch_size": 8, "lr": 1e-4},
    "eval": [{"name": "toy2d_modes"}],
}


def cli(monkeypatch, *args: str) -> tuple[int, str, str]:
    """Run ``prefopt ARGS`` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setitem(cli_module._state, "debug", False)  # no --debug left over from another test
    return cli_outputs(*args)


def write_recipe(tmp_path: Path, data=None, text: str | None = None) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data if data is not None else BASE))
    return path


def with_changes(**sections) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))  # deep copy
    for key, value in sections.items():
        if value is None:
            data.pop(key, None)
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return data


def assert_one_error_line(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def test_base_recipe_is_valid(tmp_path, monkeypatch):
    code, out, err = cli(monkeypatch, "validate", str(write_recipe(tmp_path)))
    assert code == 0 and err == "" and out.strip().endswith(": ok")


# (id, recipe data or raw text, overrides, fragments the error line must hold)
CASES = [
    ("malformed-yaml", "seed: 0\nbackbone: {name: toy2d\nobjective: x\n", [],
     ["malformed YAML", "line 3"]),
    ("not-a-mapping", "- backbone\n- objective\n", [], ["must be a mapping"]),
    ("unknown-top-level-key", with_changes(trian=BASE["train"]), [],
     ["unknown key 'trian'", "did you mean 'train'"]),
    ("unknown-nested-key", with_changes(train={"max_step": 3}), [],
     ["unknown key 'train.max_step'", "did you mean 'max_steps'"]),
    ("unknown-plugin-param", with_changes(objective={"bta": 5}), [],
     ["unknown key 'objective.bta'", "did you mean 'beta'"]),
    ("unknown-plugin-param-in-list", with_changes(eval=[{"name": "toy2d_modes", "samples_per_condtion": 50}]), [],
     ["eval.0.samples_per_condtion", "did you mean 'samples_per_condition'"]),
    ("unknown-objective", with_changes(objective={"name": "ddpso"}), [],
     ["objective.name", "unknown objective 'ddpso'", "available: ", "diffusion_dpo", "did you mean 'ddspo'"]),
    ("unknown-pair-source", with_changes(pairs={"source": {"name": "toy2d_neighbors"}}), [],
     ["pairs.source.name", "unknown pair source 'toy2d_neighbors'", "available: ", "did you mean 'toy2d_neighbours'"]),
    ("unknown-backbone", with_changes(backbone={"name": "sd99"}), [],
     ["unknown backbone 'sd99'", "available: ", "toy2d"]),
    ("unknown-evaluator", with_changes(eval=[{"name": "nope"}]), [], ["eval.0.name", "unknown evaluator 'nope'"]),
    ("wrong-type", with_changes(train={"max_steps": "ten"}), [], ["train.max_steps", "integer", "'ten'"]),
    ("wrong-type-plugin", with_changes(backbone={"hidden": "wide"}), [], ["backbone.hidden", "'wide'"]),
    ("out-of-range", with_changes(train={"lr": -1}), [], ["train.lr", "greater than 0", "-1"]),
    ("out-of-range-plugin", with_changes(objective={"beta": 0}), [], ["objective.beta", "greater than 0"]),
    ("bad-choice", with_changes(train={"optimizer": "sgd"}), [], ["train.optimizer", "'sgd'"]),
    ("missing-section", with_changes(objective=None), [], ["objective", "required"]),
    ("component-not-a-section", with_changes(backbone="toy2d"), [], ["backbone", "'toy2d'"]),
    ("override-names-no-field", BASE, ["train.max_step=3"],
     ["override train.max_step=3 names no field", "did you mean 'max_steps'"]),
    ("override-unknown-plugin-param", BASE, ["objective.bta=5"],
     ["override objective.bta=5 names no field", "did you mean 'beta'"]),
    ("override-unknown-section", BASE, ["trian.max_steps=3"],
     ["override trian.max_steps=3 names no field", "did you mean 'train'"]),
    ("override-wrong-type", BASE, ["train.max_steps=ten"], ["train.max_steps", "'ten'"]),
    ("override-out-of-range", BASE, ["train.lr=-1"], ["train.lr", "greater than 0"]),
    ("override-into-a-value", BASE, ["train.max_steps.x=3"], ["'max_steps' is not a section"]),
    ("override-bad-index", BASE, ["eval.3.samples_per_condition=3"], ["'3' is not an index"]),
    ("override-without-equals", BASE, ["train.max_steps"], ["must look like section.field=value"]),
]


@pytest.mark.parametrize("data, overrides, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(data, overrides, fragments, tmp_path, monkeypatch):
    path = write_recipe(tmp_path, text=data) if isinstance(data, str) else write_recipe(tmp_path, data)
    code, out, err = cli(monkeypatch, "validate", str(path), *overrides)
    assert_one_error_line(code, err, *fragments)


def test_malformed_yaml_names_the_file_and_line(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, text="seed: 0\ntrain:\n  max_steps: [1, 2\n  lr: 3\n")
    code, _, err = cli(monkeypatch, "validate", str(path))
    line = assert_one_error_line(code, err, str(path), "malformed YAML")
    assert "line " in line


def test_missing_recipe_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.yaml"
    code, _, err = cli(monkeypatch, "validate", str(missing))
    assert_one_error_line(code, err, "recipe file not found", str(missing))


@pytest.mark.parametrize("command", ["validate", "run", "compare", "eval", "bench"])
def test_every_recipe_command_reports_recipe_errors(command, tmp_path, monkeypatch):
    # The commands share one loader: none of them gets as far as torch.
    path = write_recipe(tmp_path, with_changes(train={"lr": -1}))
    code, _, err = cli(monkeypatch, command, str(path))
    assert_one_error_line(code, err, "train.lr")


def test_debug_re_raises_with_the_traceback(tmp_path, monkeypatch, capsys):
    path = write_recipe(tmp_path, with_changes(train={"lr": -1}))
    monkeypatch.setattr(sys, "argv", ["prefopt", "--debug", "validate", str(path)])
    with pytest.raises(PrefoptError, match="train.lr"):
        main()


def test_debug_prints_a_traceback_in_a_real_process(tmp_path):
    code, _, err, _ = run_cli(["--debug", "validate", str(tmp_path / "nope.yaml")])
    assert code != 0
    assert "Traceback" in err and "recipe file not found" in err
    code, _, err, _ = run_cli(["validate", str(tmp_path / "nope.yaml")])
    assert code == 2 and "Traceback" not in err and err.startswith("error: ")


# -- plugins that cannot load ----------------------------------------------------------------

@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path for fake installed distributions; their modules are forgotten after."""
    directory = tmp_path / "site"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))  # also invalidates import caches
    before = set(sys.modules)
    yield directory
    for name in set(sys.modules) - before:
        if name.startswith("prefopt_fake_"):
            del sys.modules[name]


def _objective_dist(site: Path, dist: str, package: str, objective_name: str) -> None:
    install_source(
        site, dist,
        {
            f"{package}/__init__.py": "",
            f"{package}/plugin.py": f"""
                from prefopt.hookspecs import hookimpl
                from prefopt.interfaces import Objective

                PREFOPT_API = 2


                class Twin(Objective):
                    \"\"\"An objective whose name another plugin also claims.\"\"\"

                    name = {objective_name!r}


                @hookimpl
                def prefopt_objectives():
                    return [Twin]
            """,
        },
        {"twin": f"{package}.plugin"},
    )


def test_plugin_that_fails_to_import_is_named_with_its_error(site, tmp_path, monkeypatch):
    install_source(
        site, "prefopt-fake-broken",
        {
            "prefopt_fake_broken/__init__.py": "",
            "prefopt_fake_broken/plugin.py": "import prefopt_fake_missing_dependency\n",
        },
        {"broken": "prefopt_fake_broken.plugin"},
    )
    code, _, err = cli(monkeypatch, "validate", str(write_recipe(tmp_path)))
    assert_one_error_line(
        code, err, "'broken'", "prefopt-fake-broken", "prefopt_fake_broken.plugin", "failed to import",
        "ModuleNotFoundError", "prefopt_fake_missing_dependency",
    )
    # `prefopt plugins` reports the same, instead of a partial list.
    code, _, err = cli(monkeypatch, "plugins")
    assert_one_error_line(code, err, "prefopt-fake-broken")


def test_two_distributions_registering_one_name(site, tmp_path, monkeypatch):
    _objective_dist(site, "prefopt-fake-twin-a", "prefopt_fake_twin_a", "twin")
    _objective_dist(site, "prefopt-fake-twin-b", "prefopt_fake_twin_b", "twin")
    code, _, err = cli(monkeypatch, "validate", str(write_recipe(tmp_path)))
    assert_one_error_line(
        code, err, "two plugins register the objective 'twin'", "prefopt-fake-twin-a", "prefopt-fake-twin-b"
    )


def test_a_plugin_may_not_take_a_first_party_name(site, tmp_path, monkeypatch):
    _objective_dist(site, "prefopt-fake-shadow", "prefopt_fake_shadow", "ddspo")
    code, _, err = cli(monkeypatch, "plugins")
    assert_one_error_line(code, err, "'ddspo'", "prefopt_objectives.ddspo", "prefopt-fake-shadow")


def _module_with(name: str, *classes) -> ModuleType:
    module = ModuleType(name)

    @hookimpl
    def prefopt_objectives():
        return list(classes)

    module.prefopt_objectives = prefopt_objectives
    module.PREFOPT_API = 2
    return module


class _TwinA(Objective):
    name = "twin"

    class Config(PluginConfig):
        pass


class _TwinB(Objective):
    name = "twin"


def test_duplicate_names_between_modules():
    with pytest.raises(PluginError, match="two plugins register the objective 'twin'") as info:
        PluginRegistry(modules=[_module_with("mod_a", _TwinA), _module_with("mod_b", _TwinB)], autoload=False)
    assert "_TwinA" in str(info.value) and "_TwinB" in str(info.value)
    assert "mod_a" in str(info.value) and "mod_b" in str(info.value)


def test_a_class_of_the_wrong_kind_is_refused():
    class NotAnObjective:
        name = "x"

    with pytest.raises(PluginError, match="not a Objective"):
        PluginRegistry(modules=[_module_with("mod_c", NotAnObjective)], autoload=False)


def test_registries_are_independent():
    # No module-level registry: a registry built with an extra module does
    # not leak that plugin into the next one.
    with_extra = PluginRegistry(modules=[_module_with("mod_d", _TwinA)])
    assert "twin" in with_extra.names("objective")
    assert "twin" not in PluginRegistry().names("objective")


# -- recipes that YAML accepts and prefopt must not ---------------------------------------------

DUPLICATES = [
    ("top-level", "seed: 0\nseed: 1\n", ["'seed'", "lines 1 and 2"]),
    ("nested", "train:\n  lr: 1.0e-4\n  max_steps: 3\n  lr: 2.0e-4\n", ["'lr'", "lines 2 and 4"]),
    ("in-a-list", "eval:\n  - name: toy2d_modes\n    name: x\n", ["'name'", "lines 2 and 3"]),
    ("in-a-compare-variant", "compare:\n  variants:\n    a: {objective: {beta: 1, beta: 2}}\n", ["'beta'", "lines 3 and 3"]),
    ("two-variants-of-one-name", "compare:\n  variants:\n    dpo: {}\n    kto: {}\n    dpo: {}\n",
     ["'dpo'", "lines 3 and 5"]),
    ("one-key-two-spellings", "seed: 1\n? !!str seed\n: 2\n", ["'seed'"]),
    ("integer-keys", "compare:\n  variants:\n    a: {}\n  seeds: {1: a, 0x1: b}\n", ["1", "twice"]),
]


@pytest.mark.parametrize("text, fragments", [c[1:] for c in DUPLICATES], ids=[c[0] for c in DUPLICATES])
def test_duplicate_keys_are_refused_at_any_depth(tmp_path, monkeypatch, text, fragments):
    body = yaml.safe_dump({k: v for k, v in BASE.items() if f"\n{k}:" not in "\n" + text})
    path = write_recipe(tmp_path, text=text + body)
    code, _, err = cli(monkeypatch, "validate", str(path))
    assert_one_error_line(code, err, str(path), "appears twice", *fragments)


def test_merge_keys_may_be_overridden(tmp_path, monkeypatch):
    # `<<` copies keys in on purpose; an explicit key after it is not a duplicate.
    text = yaml.safe_dump({k: v for k, v in BASE.items() if k != "train"}) + (
        "train:\n  <<: {max_steps: 5, batch_size: 8}\n  max_steps: 3\n")
    code, out, err = cli(monkeypatch, "validate", str(write_recipe(tmp_path, text=text)))
    assert code == 0, err


def _alias_bomb(levels: int, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _flow_alias_bomb(levels: int, width: int = 9) -> str:
    """The same bomb as one flow mapping, for an override's value."""
    items = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    items += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "{" + ", ".join(items) + "}"


@pytest.mark.parametrize("where", ["field", "compare-variant", "override"])
def test_an_alias_bomb_fails_fast_in_bounded_memory(tmp_path, monkeypatch, where):
    """9**12 (about 2.8e11) values if expanded: refused in well under a second and a few MB."""
    import time
    import tracemalloc

    body, extra = yaml.safe_dump(BASE), []
    if where == "field":
        path = write_recipe(tmp_path, text=_alias_bomb(12) + body.replace("seed: 0", "seed: *a11"))
    elif where == "compare-variant":
        path = write_recipe(tmp_path, text=_alias_bomb(12) + body
                            + "compare:\n  variants:\n    big: {objective: {beta: *a11}}\n")
    else:
        path, extra = write_recipe(tmp_path), ["objective.beta=" + _flow_alias_bomb(12)]
    tracemalloc.start()
    began = time.perf_counter()
    code, _, err = cli(monkeypatch, "validate", str(path), *extra)
    elapsed = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    line = assert_one_error_line(code, err, "aliases expand this value to more than")
    assert elapsed < 5 and peak < 50 * 2**20, (elapsed, peak)
    assert len(line) < 300


def test_an_alias_that_contains_itself_is_refused(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, text=yaml.safe_dump(BASE) + "x: &a [1, *a]\n")
    code, _, err = cli(monkeypatch, "validate", str(path))
    assert_one_error_line(code, err, "refers to a value that contains it")


def test_long_values_are_cut_short_in_errors(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, with_changes(train={"max_steps": ["x" * 5000] * 50}))
    code, _, err = cli(monkeypatch, "validate", str(path))
    line = assert_one_error_line(code, err, "train.max_steps")
    assert len(line) < 400
    code, _, err = cli(monkeypatch, "validate", str(write_recipe(tmp_path)), "train.max_step=" + "y" * 10000)
    assert len(assert_one_error_line(code, err, "train.max_step=")) < 400


NUMBERS = [
    ("bool-as-int", "train.max_steps=true", ["train.max_steps", "boolean"]),
    ("bool-as-float", "train.lr=false", ["train.lr", "boolean"]),
    ("bool-as-plugin-float", "objective.beta=true", ["objective.beta", "boolean"]),
    ("bool-in-a-pair", "train.adam_betas=[true, 0.9]", ["train.adam_betas", "boolean"]),
    ("inf-lr", "train.lr=.inf", ["train.lr", "finite"]),
    ("nan-lr", "train.lr=.nan", ["train.lr", "finite"]),
    ("inf-weight-decay", "train.weight_decay=.inf", ["train.weight_decay", "finite"]),
    ("inf-beta", "objective.beta=.inf", ["objective.beta", "finite"]),
    ("minus-inf-grad-norm", "train.max_grad_norm=-.inf", ["train.max_grad_norm", "finite"]),
    ("nan-in-a-list", "train.adam_betas=[.nan, 0.9]", ["train.adam_betas.0", "finite"]),
    ("huge-float", "train.lr=1e309", ["train.lr", "finite"]),
    ("negative-seed", "seed=-1", ["seed", "greater than or equal to 0"]),
    ("seed-too-large", "seed=4294967296", ["seed", "less than 4294967296"]),
    ("shuffle-seed-too-large", "pairs.prompts={path: p.txt, shuffle_seed: 99999999999}", ["shuffle_seed"]),
    ("beta1-one", "train.adam_betas=[1.0, 0.999]", ["train.adam_betas", "[0, 1)"]),
    ("beta2-negative", "train.adam_betas=[0.9, -0.1]", ["train.adam_betas", "[0, 1)"]),
    ("compare-no-variants", "compare={variants: {}}", ["compare.variants", "at least one variant"]),
    ("compare-seed-repeated", "compare={variants: {a: {}}, seeds: [3, 1, 3]}", ["compare.seeds", "seed 3"]),
    ("compare-seed-out-of-range", "compare={variants: {a: {}}, seeds: [0, 4294967296]}", ["compare.seeds"]),
    ("compare-figure-no-evaluator", "compare={variants: {a: {}}, figure: clip_score}",
     ["compare.figure", "'clip_score'", "toy2d_modes"]),
    ("compare-variant-not-a-section", "compare={variants: {a: 5}}", ["compare.variants.a"]),
    ("compare-variant-inf", "compare={variants: {a: {train: {lr: .inf}}}}", ["compare.variants.a.train.lr", "finite"]),
    ("compare-variant-bool", "compare={variants: {a: {train: {max_steps: true}}}}", ["variant a", "boolean"]),
]


@pytest.mark.parametrize("override, fragments", [c[1:] for c in NUMBERS], ids=[c[0] for c in NUMBERS])
def test_out_of_range_values_are_refused_at_validate(tmp_path, monkeypatch, override, fragments):
    code, _, err = cli(monkeypatch, "validate", str(write_recipe(tmp_path)), override)
    assert_one_error_line(code, err, *fragments)


def test_resume_and_overwrite_together_are_refused(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, with_changes(output_dir=str(tmp_path / "run")))
    code, _, err = cli(monkeypatch, "run", str(path), "--resume", "--overwrite")
    assert_one_error_line(code, err, "--resume", "--overwrite")
    code, _, err = cli(monkeypatch, "run", str(path), "--checkpoint", "step-00000002")
    assert_one_error_line(code, err, "--checkpoint", "--resume")
    assert not (tmp_path / "run").exists()


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(yaml.safe_dump(BASE).encode() + b"# caf\xe9\n")
    code, _, err = cli(monkeypatch, "validate", str(path))
    assert_one_error_line(code, err, str(path), "not UTF-8")


def test_an_unreadable_recipe_is_one_line(tmp_path, monkeypatch):
    path = write_recipe(tmp_path)  # root reads any file whatever its mode: the refusal is simulated
    real = Path.open

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    code, _, err = cli(monkeypatch, "validate", str(path))
    assert_one_error_line(code, err, str(path), "Permission denied")


def test_an_os_error_anywhere_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """The last line of defence in the CLI: an OSError no closer handler caught."""
    import prefopt.recipe as recipe_module

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error", "/some/where/file.bin")

    monkeypatch.setattr(recipe_module, "load_recipe", broken)
    code, _, err = cli(monkeypatch, "validate", str(write_recipe(tmp_path)))
    assert_one_error_line(code, err, "/some/where/file.bin", "Input/output error")


def test_a_long_unknown_plugin_name_is_cut_short(tmp_path, monkeypatch):
    code, _, err = cli(monkeypatch, "validate", str(write_recipe(tmp_path)), "objective.name=" + "x" * 3000)
    assert len(assert_one_error_line(code, err, "unknown objective 'xxxx")) < 400


def test_a_model_larger_than_memory_is_one_line(tmp_path):
    """A toy denoiser of 10^6 hidden units asks torch's CPU allocator for terabytes: one line, exit 2."""
    from helpers import cli as run_in_process, error_lines, write_toy_recipe

    recipe = write_toy_recipe(tmp_path, pretrain=False, backbone={"hidden": 1_000_000})
    code, err = run_in_process("run", str(recipe))
    assert code == 2
    [line] = error_lines(err)
    assert line.startswith("error: out of memory: ") and "train.batch_size" in line
    assert "Traceback" not in err


MISBEHAVING_PLUGINS = {
    # plugin.py body (after PREFOPT_API = 2 and the imports) -> words the one error line must hold
    "raises": ("@hookimpl\ndef prefopt_objectives():\n    raise RuntimeError('plugin bug')\n",
               ["prefopt_objectives() failed", "RuntimeError", "plugin bug"]),
    "returns-a-class": ("class Odd(Objective):\n    name = 'odd'\n\n\n@hookimpl\ndef prefopt_objectives():\n"
                        "    return Odd\n", ["must return a list of classes", "got type"]),
    "bad-signature": ("@hookimpl\ndef prefopt_objectives(unexpected):\n    return []\n", ["unexpected"]),
    "name-not-a-string": ("class Odd(Objective):\n    name = 7\n\n\n@hookimpl\ndef prefopt_objectives():\n"
                          "    return [Odd]\n", ["Odd", "whose name is 7", "not a non-empty string"]),
    "exits-at-import": ("import sys\nsys.exit(3)\n", ["failed to import", "SystemExit"]),
    "exits-in-its-hook": ("import sys\n\n\n@hookimpl\ndef prefopt_objectives():\n    sys.exit(4)\n",
                          ["prefopt_objectives() failed", "SystemExit"]),
}


@pytest.mark.parametrize("kind", sorted(MISBEHAVING_PLUGINS))
def test_a_misbehaving_third_party_plugin_is_one_line_naming_it(site, tmp_path, monkeypatch, kind):
    body, words = MISBEHAVING_PLUGINS[kind]
    package = f"prefopt_fake_odd_{kind.replace('-', '_')}"
    header = "from prefopt.hookspecs import hookimpl\nfrom prefopt.interfaces import Objective\n\nPREFOPT_API = 2\n\n\n"
    install_source(site, f"prefopt-fake-odd-{kind}", {f"{package}/__init__.py": "", f"{package}/plugin.py": header + body},
                   {"odd": f"{package}.plugin"})
    for command in ("plugins", "validate"):
        args = [command] + ([str(write_recipe(tmp_path))] if command == "validate" else [])
        code, _, err = cli(monkeypatch, *args)
        assert_one_error_line(code, err, package, *words)


@pytest.mark.parametrize(("target", "words"), [("directory", ["is a directory, not a recipe file"]),
                                               ("device", ["/dev/null is not a regular file"])])
def test_a_recipe_path_that_is_not_a_file_says_what_it_is(tmp_path, monkeypatch, target, words):
    path = str(tmp_path) if target == "directory" else "/dev/null"
    code, _, err = cli(monkeypatch, "validate", path)
    assert_one_error_line(code, err, *words)


def test_an_output_dir_that_is_a_file_says_so(tmp_path):
    from helpers import cli as run_in_process, error_lines, write_toy_recipe

    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    code, err = run_in_process("run", str(write_toy_recipe(tmp_path, taken, pretrain=False)))
    assert code == 2
    [line] = error_lines(err)
    assert f"output_dir {taken} is a file, not a directory" in line
    assert taken.read_text() == "mine"


def test_an_empty_checkpoint_name_is_refused(tmp_path):
    from helpers import cli as run_in_process, error_lines, write_toy_recipe

    code, err = run_in_process("run", str(write_toy_recipe(tmp_path, pretrain=False)), "--resume", "--checkpoint", "")
    assert code == 2
    assert "--checkpoint names a checkpoint" in error_lines(err)[0]


@pytest.mark.parametrize("message", ["Caught OutOfMemoryError in DataLoader worker process 0",
                                     "CUDA error: out of memory", "MPS backend out of memory (MPS allocated: 9 GB)"])
def test_out_of_memory_reported_as_a_runtime_error_is_one_line(tmp_path, monkeypatch, message):
    from helpers import cli as run_in_process, error_lines, write_toy_recipe
    from prefopt import stages

    def exhausted(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(stages, "train_stage", exhausted)
    code, err = run_in_process("run", str(write_toy_recipe(tmp_path, pretrain=False)))
    assert code == 2
    [line] = error_lines(err)
    assert line.startswith("error: out of memory: ") and message.splitlines()[0][:40] in line
