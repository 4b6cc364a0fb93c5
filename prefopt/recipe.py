"""Typed recipes: YAML -> pydantic, component sections checked against plugin Configs.

A recipe is one experiment. Component sections are ``{name: <plugin>, ...params}``
and the params are validated against the named plugin's ``Config``, so every
mistake is reported with its dotted path before anything heavy is imported.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prefopt.errors import RecipeError
from prefopt.interfaces import PluginConfig
from prefopt.paths import RECIPE_PATH_OR_HUB_ID, resolve_recipe_paths
from prefopt.registry import PluginRegistry


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


# Seeds feed numpy's and torch's generators, which take 32-bit seeds.
SEED_LIMIT = 2**32


class Component(BaseModel):
    """``{name: ..., **params}``; params are checked later against the plugin."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(Strict):
    max_steps: int = Field(100, ge=0, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="pairs per process per micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    lr: float = Field(1e-5, gt=0, description="learning rate (per sample if scale_lr)")
    scale_lr: bool = Field(False, description="multiply lr by the effective batch size, as Diffusion-DPO does")
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's β1, β2, each in [0, 1)")
    weight_decay: float = Field(
        0.01, ge=0, description="decoupled weight decay (0.01: the official DDSPO, Diffusion-DPO and KTO scripts)"
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip; null disables")
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, value):
        if not all(0 <= beta < 1 for beta in value):
            raise ValueError("each of Adam's betas must be in [0, 1)")
        return value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        # YAML 1.1 reads a bare `no` as false; accelerate's spelling is "no".
        return "no" if value is False else value
    reference_micro_batch: int | None = Field(
        None, ge=1, description="chunk the no-grad reference forward to this many inputs"
    )
    text_cache: bool = Field(
        False, description="encode every prompt once before training and read embeddings from <output_dir>/text_cache"
    )
    allow_tf32: bool = Field(
        True, description="TF32 tensor cores for float32 matmuls and convolutions (CUDA Ampere and newer; no effect elsewhere)"
    )
    compile: bool = Field(
        False, description="torch.compile the denoiser's repeated blocks (transformer blocks, UNet ResNet blocks) "
        "in place: regional compilation, so compile time stays small (docs/performance.md)"
    )
    optimizer_impl: Literal["auto", "foreach", "fused", "for-loop"] = Field(
        "auto", description="AdamW's kernels: auto (torch's choice: foreach on accelerators), foreach, fused "
        "(one kernel for all parameters), for-loop (per parameter)"
    )
    channels_last: bool = Field(
        False, description="UNet weights and activations in channels-last memory format (docs/performance.md)"
    )
    loader_workers: int = Field(
        2, ge=0, description="DataLoader worker processes reading pairs ahead of the step (0: read in the loop)"
    )
    loader_prefetch: int = Field(4, ge=1, description="micro-step batches each loader worker reads ahead")
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(
        500, ge=0, description="steps between checkpoints (0: only when a signal stops the run)"
    )
    keep_checkpoints: int = Field(2, ge=1)
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss or gradient stops the run, or skips the step (counted)"
    )
    report_to: list[Literal["tensorboard", "wandb", "trackio", "mlflow"]] = Field(
        default_factory=list,
        description="experiment trackers that get the logged metrics, the recipe and validation grids "
        "(one name or a list; metrics.jsonl is always written)",
    )
    validate_every: int = Field(
        0, ge=0, description="steps between validation samples of fixed prompts and seeds (0: none)"
    )
    validation_prompts: list[str] = Field(
        default_factory=list, description="prompts to validate with (empty: the first 4 distinct prompts of the pairs)"
    )
    validation_samples: int = Field(4, ge=1, description="samples per validation prompt (seeds validation_seed + j)")
    validation_seed: int = Field(0, ge=0, description="seed of the first validation sample of every prompt")
    validation_eval: list[str] = Field(
        default_factory=list,
        description="evaluators of the recipe's eval list (by name) that also score the student at each validation",
    )
    ema: bool = Field(False, description="keep an EMA of the trained weights; validation and final/ use it")
    ema_decay: float = Field(
        0.9999, gt=0, lt=1, description="EMA decay (diffusers EMAModel ramps it up: min(decay, (1 + t)/(10 + t)) at step t)"
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value):
        # `train.report_to=tensorboard` on the command line is one name; "none" is none.
        if value in (None, "none"):
            return []
        return [value] if isinstance(value, str) else value

    def effective_batch(self, num_processes: int) -> int:
        """Pairs per optimizer step: batch_size × grad_accum × processes."""
        return self.batch_size * self.grad_accum * num_processes

    def effective_lr(self, num_processes: int) -> float:
        """The optimizer's lr: with ``scale_lr``, lr × batch_size × grad_accum × processes.

        The same product as the official DDSPO, Diffusion-DPO and diffusers
        scripts' ``--scale_lr`` (``accelerator.num_processes`` included).
        """
        return self.lr * self.effective_batch(num_processes) if self.scale_lr else self.lr


class PromptsConfig(Strict):
    path: str = Field(description="text (one prompt a line), .jsonl, .csv, .parquet, or a datasets dir / hub id",
                      json_schema_extra=RECIPE_PATH_OR_HUB_ID)
    column: str = "prompt"
    split: str = "train"
    dedupe: bool = True
    min_words: int = Field(1, ge=0)
    max_count: int | None = Field(None, ge=1)
    shuffle_seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="shuffle with this seed, in [0, 2^32)")


def _expand_home(path: str) -> str:
    """``~/runs/x`` is the home directory's, as a shell would have it and as the files a recipe reads are.

    Taken literally, it made a directory named ``~`` in the working directory, and the obvious
    clean-up of that, ``rm -r ~``, deletes the home directory.
    """
    return os.path.expanduser(path)


class PairsConfig(Strict):
    source: Component
    prompts: PromptsConfig | None = None
    dir: str | None = Field(None, description="pair dataset directory (default: <output_dir>/pairs; relative: "
                                              "from the working directory)")
    shard_size: int = Field(256, ge=1, description="pairs per shard")
    sample_batch_size: int = Field(64, ge=1, description="prompts per sampling call while building")
    latent_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="dtype the x0 data is stored in (auto: float16 for latent backbones, else float32)"
    )

    @field_validator("dir")
    @classmethod
    def _home_expanded(cls, value: str | None) -> str | None:
        return None if value is None else _expand_home(value)


class PretrainConfig(Strict):
    """Train the reference first (the toy experiment's noisy-data reference)."""

    pairs: PairsConfig
    objective: Component = Component(name="denoise")
    train: TrainConfig = TrainConfig()


class CompareConfig(Strict):
    """``prefopt compare``: one recipe, several variants, same pairs and seeds."""

    variants: dict[str, dict[str, Any]] = Field(
        description="variant name -> dotted overrides, e.g. {objective: {name: diffusion_dpo, beta: 5000}}"
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="each in [0, 2^32)")
    figure: str | None = Field(None, description="evaluator whose figure() draws the comparison")

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, variants):
        # A name becomes the directory <output_dir>/<name>/: it must stay one plain name inside it.
        if not variants:
            raise ValueError("needs at least one variant")
        seen: dict[str, str] = {}
        for name in variants:
            if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name) or SEED_DIR.fullmatch(name):
                raise ValueError(f"variant name {_short(name)} must be letters, digits, '_', '-' or '.', "
                                 "start with a letter or digit, and not look like seed-N")
            if name.lower() in RESERVED_NAMES:
                raise ValueError(f"variant name {name!r} is the name of a file compare writes")
            if name.lower() in seen:  # one directory on a case-insensitive file system
                raise ValueError(f"variant names {seen[name.lower()]!r} and {name!r} differ only in case")
            seen[name.lower()] = name
        return variants

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds):
        outside = [seed for seed in seeds if not 0 <= seed < SEED_LIMIT]
        if outside:
            raise ValueError(f"seed {outside[0]} is outside [0, 2^32)")
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice (each seed is one run per variant)")
        return seeds


VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SEED_DIR = re.compile(r"seed-\d+", re.IGNORECASE)
RESERVED_NAMES = {"results.csv", "results.json", "report.md", "comparison.png"}


class Recipe(Strict):
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="in [0, 2^32)")
    output_dir: str = Field("runs/default", pattern=r"\S", description="the run directory (prefopt's alone; "
                            "relative: from the working directory)")
    backbone: Component
    pretrain: PretrainConfig | None = None
    pairs: PairsConfig
    objective: Component
    train: TrainConfig = TrainConfig()
    eval: list[Component] = Field(default_factory=list)
    compare: CompareConfig | None = None

    @field_validator("output_dir")
    @classmethod
    def _home_expanded(cls, value: str) -> str:
        return _expand_home(value)

    @model_validator(mode="after")
    def _figure_names_an_evaluator(self):
        if self.compare is not None and self.compare.figure is not None:
            names = [component.name for component in self.eval]
            if self.compare.figure not in names:
                have = ", ".join(names) or "none"
                raise ValueError(f"compare.figure {self.compare.figure!r} names no evaluator in eval (have: {have})")
        return self


# Where each component section lives, and which plugin kind it names.
PLUGIN_FIELDS = {
    ("backbone",): "backbone",
    ("objective",): "objective",
    ("pairs", "source"): "pair_source",
    ("pretrain", "objective"): "objective",
    ("pretrain", "pairs", "source"): "pair_source",
}


class ResolvedRecipe:
    """A validated recipe plus the typed Config of every component in it."""

    def __init__(self, recipe: Recipe, configs: dict[tuple, PluginConfig], source: str):
        self.recipe = recipe
        self.configs = configs
        self.source = source

    def config(self, *path: Any) -> PluginConfig:
        return self.configs[tuple(path)]

    def to_dict(self) -> dict[str, Any]:
        """The recipe with every default filled in: what a run actually used."""
        data = self.recipe.model_dump(mode="json")
        for path, config in self.configs.items():
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = {"name": node[path[-1]]["name"], **config.model_dump(mode="json")}
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_REPR = reprlib.Repr()  # keyword settings need Python 3.12
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def _short(value: Any) -> str:
    """A value as an error message shows it: cut short, however large (or deeply aliased) it is."""
    return _REPR.repr(value)


def _dotted(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the sub-model that ``loc`` points into (best effort)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = next(
            (a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)),
            annotation,
        )
    return list(getattr(current, "model_fields", {}) or [])


def _explain(error: dict, model: type[BaseModel], prefix: tuple, where: str, overrides: dict[str, Any]) -> str:
    loc = prefix + tuple(error["loc"])
    path = _dotted(loc)
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        valid = _fields_at(model, tuple(error["loc"])[:-1])
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; valid: {', '.join(valid)}" if valid else "")
        # The override that put the key there: the key itself, or a section
        # it created on its way (`trian.max_steps=3` creates `trian`).
        named = [k for k in overrides if k == path or k.startswith(path + ".")]
        if named:
            return f"override {named[0]}={_short(overrides[named[0]])} names no field{hint}"
        return f"{where}: unknown key {path!r}{hint}"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {_short(value)})"
    # A model-level check has an empty path; pydantic prefixes the message of
    # a validator's ValueError with "Value error, ", which says nothing here.
    place = f"{path}: " if path else ""
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {place}{message}{shown}"


def _first_error(exc: ValidationError, model, prefix, where, overrides) -> RecipeError:
    return RecipeError(_explain(exc.errors()[0], model, prefix, where, overrides))


# -- YAML: no duplicate keys, bounded aliases ------------------------------------------------
MAX_NODES = 100_000  # values a recipe may expand to, aliases followed; real recipes hold a few hundred
MAX_RECIPE_BYTES = 1 << 20  # real recipes are a few KiB; YAML parses ~0.4 MB/s, so 100 MB would hang for minutes


class YAMLRefused(Exception):
    """Valid YAML that a recipe may not be: a key given twice, aliases that expand without bound."""


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (at any depth) and alias bombs, before anything is built."""

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<` merges are meant to be overridden; unhashable keys fail later
            key = self._scalar_key(key_node)
            line = key_node.start_mark.line + 1
            if key in first:
                raise YAMLRefused(f"key {_short(key)} appears twice, on lines {first[key]} and {line}")
            first[key] = line
        return node

    def _scalar_key(self, node) -> Any:
        """The key as the recipe will see it (``1`` and ``0x1`` are one key), or its text if odd."""
        try:
            key = self.construct_object(node)
            hash(key)
        except Exception:  # noqa: BLE001 - a bad scalar is reported when the document is built
            return (node.tag, node.value)
        self.constructed_objects.pop(node, None)
        return (type(key).__name__, key) if isinstance(key, bool) else key

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root) -> None:
    """Refuse a document whose aliases make it expand past MAX_NODES values, or refer to themselves.

    Iterative, each distinct node visited once: the check takes time linear in the
    file however much the aliases would expand it.
    """
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            ancestors.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                line = node.start_mark.line + 1
                raise YAMLRefused(f"line {line}: aliases expand this value to more than {MAX_NODES} values")
            continue
        if key in sizes:
            continue
        if key in ancestors:
            raise YAMLRefused(f"line {node.start_mark.line + 1}: an alias refers to a value that contains it")
        ancestors.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path} is a directory, not a recipe file")
    if path.exists() and not path.is_file():
        raise RecipeError(f"{path} is not a regular file (a device or a pipe?); give a recipe .yaml file")
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path} is over {MAX_RECIPE_BYTES >> 20} MiB: not a recipe (they are a few KiB); "
                          "keep data in the files a recipe names")
    try:
        data = parse_yaml(raw.decode("utf-8"))
    except YAMLRefused as exc:
        raise RecipeError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}:{line} malformed YAML: {problem}") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except Exception as exc:  # noqa: BLE001 - YAML's constructors raise anything: 2001-13-45, "!!float ''"
        problem = "nested too deeply" if isinstance(exc, RecursionError) else (str(exc) or type(exc).__name__)
        raise RecipeError(f"{path}: malformed YAML: {problem.splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return _unshared(data)


def _unshared(value: Any) -> Any:
    """The parsed recipe with every alias made a copy of its own.

    YAML builds an alias as the very object it names, so ``train: *common`` and the
    ``pretrain.train: &common`` it points at would be one dict, and an override of
    ``train.max_steps`` would change the pretraining stage too. The aliases' expansion
    is bounded (MAX_NODES), so the copy is too.
    """
    if isinstance(value, dict):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshared(item) for item in value]
    return value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r} has an empty field name")
    if not key.isprintable():
        raise RecipeError(f"override {text!r} has a control character in its field name")
    try:
        value = _unshared(parse_yaml(raw)) if raw.strip() else ""
    except YAMLRefused as exc:
        raise RecipeError(f"override {key}: {exc}") from None
    except Exception:  # noqa: BLE001 - not YAML (YAML's constructors raise anything): the text itself
        value = raw
    return key, value


def _list_index(items: list, part: str, key: str, value: Any) -> int:
    """``eval.0.samples=...``: a numeric part indexes a list section."""
    if not part.isdigit() or int(part) >= len(items):
        raise RecipeError(f"override {key}={_short(value)}: {part!r} is not an index of a list of {len(items)}")
    return int(part)


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[_list_index(node, part, key, value)]
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                node = child
            if not isinstance(node, (dict, list)):
                raise RecipeError(f"override {key}={_short(value)}: {part!r} is not a section")
        if isinstance(node, list):
            node[_list_index(node, parts[-1], key, value)] = value
        else:
            node[parts[-1]] = value
    return data


# -- numbers: finite, and a boolean is not a number -----------------------------------------------
def _nonfinite(data: Any, loc: tuple = ()) -> tuple | None:
    """Where the first NaN or infinity in raw recipe data is (no recipe field takes one)."""
    stack = [(data, loc)]
    while stack:
        value, here = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return here
        if isinstance(value, dict):
            stack.extend((v, here + (k,)) for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, here + (i,)) for i, v in reversed(list(enumerate(value))))
    return None


def _types(annotation: Any) -> list[Any]:
    """The plain types an annotation admits (through Optional, unions, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _types(arg)]
    return [annotation]


def _bool_as_number(model: type[BaseModel], data: Any, loc: tuple = ()) -> tuple | None:
    """Where raw data gives true/false to a number field (pydantic would read it as 1/0)."""
    if not isinstance(data, dict):
        return None
    for name, field in model.model_fields.items():
        if name not in data:
            continue
        value, types = data[name], _types(field.annotation)
        numeric = [t for t in types if t in (int, float)]
        if isinstance(value, bool) and numeric and bool not in types:
            return loc + (name,)
        for kind in types:
            if typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):
                args = typing.get_args(kind)
                if any(isinstance(item, bool) and arg in (int, float)
                       for item, arg in zip(value, args)):
                    return loc + (name,)
            if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(value, dict):
                found = _bool_as_number(kind, value, loc + (name,))
                if found:
                    return found
    return None


def _check_numbers(model: type[BaseModel], data: Any, where: str, prefix: tuple = ()) -> None:
    found = _nonfinite(data, prefix)
    if found is not None:
        raise RecipeError(f"{where}: {_dotted(found)}: must be a finite number")
    found = _bool_as_number(model, data, prefix)
    if found is not None:
        raise RecipeError(f"{where}: {_dotted(found)}: expected a number, got a boolean")


def resolve(
    data: dict[str, Any],
    registry: PluginRegistry,
    where: str = "recipe",
    overrides: dict[str, Any] | None = None,
) -> ResolvedRecipe:
    """Validate raw recipe data into a Recipe and each component into its Config."""
    overrides = overrides or {}
    _check_numbers(Recipe, data, where)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, Recipe, (), where, overrides) from None

    configs: dict[tuple, PluginConfig] = {}
    components: list[tuple[tuple, str, Component]] = []
    for path, kind in PLUGIN_FIELDS.items():
        node: Any = recipe
        for part in path:
            node = getattr(node, part, None) if node is not None else None
        if node is not None:
            components.append((path, kind, node))
    components += [(("eval", i), "evaluator", c) for i, c in enumerate(recipe.eval)]

    for path, kind, component in components:
        dotted = _dotted(path)
        plugin = registry.get(kind, component.name, where=f"{where}: {dotted}.name")
        _check_numbers(plugin.Config, component.params, where, path)
        try:
            configs[path] = plugin.Config.model_validate(component.params)
        except ValidationError as exc:
            raise _first_error(exc, plugin.Config, path, where, overrides) from None
    return ResolvedRecipe(recipe, configs, where)


def load_recipe(path: str | Path, registry: PluginRegistry, overrides: list[str] = ()) -> ResolvedRecipe:
    data = load_yaml(path)
    parsed = dict(parse_override(text) for text in overrides)
    apply_overrides(data, parsed)
    # Files the recipe names are found from its folder, whatever the working directory (prefopt/paths.py).
    return resolve_recipe_paths(resolve(data, registry, where=str(path), overrides=parsed), Path(path).parent)
