"""Fuzzing ``prefopt validate``: whatever the recipe or the overrides, one clean line or success.

Malformed YAML text, valid YAML of the wrong shape in any section, and random
dotted overrides are thrown at the CLI in-process. The answer is always exit
code 0, or exit code 2 with exactly one ``error: ...`` line on stderr, and
never a traceback.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import cli_outputs

BASE = {
    "seed": 0,
    "output_dir": "runs/fuzz",
    "backbone": {"name": "toy2d", "num_conditions": 8, "hidden": 32, "layers": 2,
                 "num_train_timesteps": 100, "sample_steps": 10},
    "pretrain": {
        "pairs": {"source": {"name": "toy2d_points", "points_per_condition": 50}},
        "train": {"max_steps": 30, "batch_size": 64},
    },
    "pairs": {"source": {"name": "toy2d_neighbours", "num_conditions": 8, "pairs_per_condition": 2},
              "shard_size": 16},
    "objective": {"name": "ddspo", "beta": 2000},
    "train": {"max_steps": 40, "batch_size": 8, "checkpoint_every": 10, "log_every": 1},
    "eval": [{"name": "toy2d_modes", "samples_per_condition": 10}],
    "compare": {"variants": {"dpo": {"objective": {"name": "diffusion_dpo"}}}, "seeds": [0, 1]},
}


def _paths(node, prefix=()):
    """Every dotted place in BASE (sections and fields), as tuples."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


PATHS = sorted(set(_paths(BASE)), key=str)
DOTTED = sorted({".".join(map(str, p)) for p in PATHS})

# Pieces of YAML that parsers and validators trip on.
FRAGMENTS = [
    ":", ": ", "- ", "-", "[", "]", "{", "}", ",", "\n", "\n  ", "\t", "#", "&a ", "*a", "*b", "!!python/object:os.system ",
    "!!binary ", "!!int ", "!!float ", "!!timestamp ", "!!set ", "!!omap ", "!!str ", "? ", "|", ">", "'", '"', "%YAML 1.1\n",
    "---\n", "...\n", "~", "null", "true", "no", ".nan", ".inf", "-.inf", "0x1F", "0o17", "1_000", "1e309", "2001-13-45",
    "2001-02-30", "2001-12-14t21:59:43.10-05:00", "12:30:00", "=", "train", "max_steps", "backbone", "name", "toy2d",
    "objective", "ddspo", "\x00", "\ufeff", "é", "\u2028", "<<: *a", "<<: [1]", "<<: 5",
]

scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-3, 3) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["toy2d", "ddspo", "denoise", "fp16", "bf16", "skip", "stop", "", "0"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
    max_leaves=12,
)
yaml_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=6), max_size=25).map("".join)
override_key = st.sampled_from(DOTTED) | st.lists(
    st.sampled_from(DOTTED + ["", "0", "1", "name", "x"]) | st.text(max_size=5), min_size=1, max_size=4
).map(".".join)
override_value = yaml_text | values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
# Arguments starting with "-" are options, not overrides: test_unknown_option covers them.
overrides = st.lists(
    (st.tuples(override_key, override_value).map("=".join) | st.text(max_size=10)).filter(
        lambda arg: not arg.startswith("-")),
    max_size=4,
)


def _set(data, path, value):
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@st.composite
def reshaped_recipes(draw):
    """BASE with a few places replaced, deleted or given an extra key."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        try:
            parent = data
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "delete", "extra"]))
            if action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif action == "extra" and isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(values)
            else:
                _set(data, path, draw(values))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier change removed or reshaped this place
    return data


def _validate(recipe: Path, extra: list[str]) -> tuple[int, str, str]:
    try:
        return cli_outputs("validate", recipe, *extra)
    except BaseException:  # noqa: BLE001 - a crash is the finding
        pytest.fail(f"prefopt validate crashed on {recipe.read_bytes()[:500]!r} {extra!r}:\n{traceback.format_exc()}")


def check(recipe: Path, extra: list[str]) -> tuple[int, str]:
    """Validate; success, or exactly one error line. Returns (exit code, stderr)."""
    code, out, err = _validate(recipe, extra)
    assert "Traceback" not in err + out
    if code == 0:
        assert err == "" and out == f"{recipe}: ok\n"
    else:
        assert code == 2, (code, err)
        assert err.endswith("\n") and err.count("\n") == 1, repr(err)
        assert err.startswith("error: "), repr(err)
        assert "\r" not in err, repr(err)  # a carriage return would hide the start of the line
    return code, err


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "recipe.yaml"


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_base_recipe_is_valid(recipe_path):
    recipe_path.write_text(yaml.safe_dump(BASE))
    assert _validate(recipe_path, [])[0] == 0


@FUZZ
@given(text=yaml_text)
@example(text="seed: 2001-13-45")
@example(text="output_dir: !!binary 'not base64!'")
@example(text="[" * 2000)
@example(text="a: &a [*a]")
@example(text="\x00")
@example(text="\ufeffseed: 1")
@example(text="seed: 1\nseed: 2")
@example(text="<<: 5")
def test_random_yaml_text(recipe_path, text):
    recipe_path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(recipe_path, [])


@FUZZ
@given(data=reshaped_recipes())
def test_reshaped_sections(recipe_path, data):
    recipe_path.write_text(yaml.safe_dump(data))
    check(recipe_path, [])


@FUZZ
@given(extra=overrides)
@example(extra=["train.max_steps=2001-13-45"])
@example(extra=["seed=!!binary 'not base64!'"])
@example(extra=["eval.5.name=x"])
@example(extra=["eval.0.name.x=1"])
@example(extra=["train.max_steps.x=1"])
@example(extra=["new\nkey=1"])
@example(extra=["objective.beta=[" + "[" * 2000])
@example(extra=["pretrain=null", "pretrain.train.max_steps=3"])
@example(extra=["train.max_steps=1", "train.max_steps.x=2"])
def test_random_overrides(recipe_path, extra):
    recipe_path.write_text(yaml.safe_dump(BASE))
    check(recipe_path, extra)


@pytest.mark.parametrize("extra", [["--bogus"], ["-0"], ["--resume"]])
def test_unknown_option(recipe_path, extra):
    recipe_path.write_text(yaml.safe_dump(BASE))
    code, out, err = _validate(recipe_path, extra)
    assert code == 2 and "Traceback" not in err + out
    assert err.count("\n") == 1 and err.startswith("error:")


# -- non-finite numbers, YAML aliases, compare sections ------------------------------------------

# Fewer examples than FUZZ: each case is narrower, and the default test run stays short.
FUZZ_NARROW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NUMERIC_FIELDS = ["train.lr", "train.weight_decay", "train.max_grad_norm", "objective.beta", "pretrain.train.lr",
                  "train.adam_betas.0", "backbone.hidden", "train.max_steps", "seed", "compare.seeds.0"]
NONFINITE = [".inf", "-.inf", ".nan", ".NaN", "+.inf", "1e309", "-1e400", "[.inf, 0.9]", "{a: .nan}"]


@FUZZ_NARROW
@given(key=st.sampled_from(NUMERIC_FIELDS), value=st.sampled_from(NONFINITE), more=overrides)
def test_non_finite_numbers_are_refused(recipe_path, key, value, more):
    recipe_path.write_text(yaml.safe_dump(BASE))
    if key == "train.adam_betas.0":
        key, value = "train.adam_betas", f"[{value}, 0.9]"
    code, err = check(recipe_path, [f"{key}={value}", *more])
    assert code == 2, err


@st.composite
def aliased(draw) -> tuple[str, int]:
    """A YAML flow value built from anchors and aliases, and how many values it expands to."""
    depth, width = draw(st.integers(1, 16)), draw(st.integers(1, 9))
    items = ["a0: &a0 [" + ", ".join(["1"] * width) + "]"]
    items += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
    size = sum(width ** (i + 1) for i in range(depth))  # the lists alone, an underestimate
    return "{" + ", ".join(items) + "}", size


@FUZZ_NARROW
@given(value=aliased(), key=st.sampled_from(DOTTED + ["compare.variants.x.objective.beta"]))
def test_aliases_in_overrides_are_bounded(recipe_path, value, key):
    import time

    from prefopt.recipe import MAX_NODES

    text, size = value
    recipe_path.write_text(yaml.safe_dump(BASE))
    began = time.perf_counter()
    code, _, err = _validate(recipe_path, [f"{key}={text}"])
    assert time.perf_counter() - began < 5
    assert "Traceback" not in err and (code == 0 or err.count("\n") == 1), err
    if size > MAX_NODES:
        assert code == 2 and "aliases expand" in err, err


HOSTILE_NAMES = ["../x", "../../etc", "/tmp/x", "/", ".", "..", "", "a/b", "a\\b", ".hidden", "seed-0", "SEED-3",
                 "report.md", "results.csv", "dpo", "DPO", "ok", "x" * 70, "a\x00b", "é"]
variant_names = st.sampled_from(HOSTILE_NAMES) | st.text(max_size=10)
variant_bodies = values | st.fixed_dictionaries({
    "objective": st.fixed_dictionaries({"name": st.sampled_from(["ddspo", "diffusion_dpo", "diffusion_kto", "x"])},
                                       optional={"beta": scalars}),
}, optional={"train": st.dictionaries(st.sampled_from(["lr", "max_steps", "adam_betas", "bogus"]), scalars,
                                      max_size=2)})
compare_sections = st.fixed_dictionaries(
    {"variants": st.dictionaries(variant_names, variant_bodies, max_size=4)},
    optional={"seeds": st.lists(st.integers(-2, 2**33) | st.sampled_from([0, 1, 2**32 - 1, 2**32]), max_size=4)
              | values,
              "figure": st.none() | st.sampled_from(["toy2d_modes", "clip_score"]) | st.text(max_size=6)},
) | values


@settings(FUZZ_NARROW, max_examples=60)
@given(section=compare_sections)
@example(section={"variants": {"../victim": {}}})
@example(section={"variants": {"a": {}, "A": {}}})
@example(section={"variants": {}})
@example(section={"variants": {"a": {}}, "seeds": [1, 1]})
@example(section={"variants": {"a": {}}, "figure": "nope"})
def test_compare_sections(recipe_path, section):
    from prefopt.recipe import SEED_DIR, VARIANT_NAME

    data = {**BASE, "compare": section}
    recipe_path.write_text(yaml.safe_dump(data))
    code, _ = check(recipe_path, [])
    if code == 0 and isinstance(section, dict):  # what validate accepts is safe to turn into directories
        names = list(section["variants"])
        assert names and all(VARIANT_NAME.fullmatch(n) and not SEED_DIR.fullmatch(n) for n in names)
        assert len({n.lower() for n in names}) == len(names)
        seeds = section.get("seeds", [0, 1, 2])
        assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**32 for s in seeds)
