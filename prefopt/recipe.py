"""Typed recipes: YAML -> pydantic, component sections checked against plugin Configs.

A recipe is one experiment. Component sections are ``{name: <plugin>, ...params}``
and the params are validated against the named plugin's ``Config``, so every
mistake is reported with its dotted path before anything heavy is imported.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prefopt.errors import RecipeError
from prefopt.interfaces import PluginConfig
from prefopt.registry import PluginRegistry


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


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
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(
        0.01, ge=0, description="decoupled weight decay (0.01: the official DDSPO, Diffusion-DPO and KTO scripts)"
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip; null disables")
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"

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
    path: str = Field(description="text (one prompt a line), .jsonl, .csv, .parquet, or a datasets dir / hub id")
    column: str = "prompt"
    split: str = "train"
    dedupe: bool = True
    min_words: int = Field(1, ge=0)
    max_count: int | None = Field(None, ge=1)
    shuffle_seed: int | None = None


class PairsConfig(Strict):
    source: Component
    prompts: PromptsConfig | None = None
    dir: str | None = Field(None, description="pair dataset directory (default: <output_dir>/pairs)")
    shard_size: int = Field(256, ge=1, description="pairs per shard")
    sample_batch_size: int = Field(64, ge=1, description="prompts per sampling call while building")
    latent_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="dtype the x0 data is stored in (auto: float16 for latent backbones, else float32)"
    )


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
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    figure: str | None = Field(None, description="evaluator whose figure() draws the comparison")


class Recipe(Strict):
    seed: int = 0
    output_dir: str = "runs/default"
    backbone: Component
    pretrain: PretrainConfig | None = None
    pairs: PairsConfig
    objective: Component
    train: TrainConfig = TrainConfig()
    eval: list[Component] = Field(default_factory=list)
    compare: CompareConfig | None = None


# Where each component section lives, and which plugin kind it names.
COMPONENT_SLOTS = {
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
            return f"override {named[0]}={overrides[named[0]]!r} names no field{hint}"
        return f"{where}: unknown key {path!r}{hint}"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    # A model-level check has an empty path; pydantic prefixes the message of
    # a validator's ValueError with "Value error, ", which says nothing here.
    place = f"{path}: " if path else ""
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {place}{message}{shown}"


def _first_error(exc: ValidationError, model, prefix, where, overrides) -> RecipeError:
    return RecipeError(_explain(exc.errors()[0], model, prefix, where, overrides))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}:{line}: malformed YAML: {problem}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file") from None
    except Exception as exc:  # noqa: BLE001 - YAML's constructors raise anything: 2001-13-45, "!!float ''"
        problem = "nested too deeply" if isinstance(exc, RecursionError) else (str(exc) or type(exc).__name__)
        raise RecipeError(f"{path}: malformed YAML: {problem.splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


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
        value = yaml.safe_load(raw) if raw.strip() else ""
    except Exception:  # noqa: BLE001 - not YAML (YAML's constructors raise anything): the text itself
        value = raw
    return key, value


def _list_index(items: list, part: str, key: str, value: Any) -> int:
    """``eval.0.samples=...``: a numeric part indexes a list section."""
    if not part.isdigit() or int(part) >= len(items):
        raise RecipeError(f"override {key}={value!r}: {part!r} is not an index of a list of {len(items)}")
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
                raise RecipeError(f"override {key}={value!r}: {part!r} is not a section")
        if isinstance(node, list):
            node[_list_index(node, parts[-1], key, value)] = value
        else:
            node[parts[-1]] = value
    return data


def resolve(
    data: dict[str, Any],
    registry: PluginRegistry,
    where: str = "recipe",
    overrides: dict[str, Any] | None = None,
) -> ResolvedRecipe:
    """Validate raw recipe data into a Recipe and each component into its Config."""
    overrides = overrides or {}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, Recipe, (), where, overrides) from None

    configs: dict[tuple, PluginConfig] = {}
    components: list[tuple[tuple, str, Component]] = []
    for path, kind in COMPONENT_SLOTS.items():
        node: Any = recipe
        for part in path:
            node = getattr(node, part, None) if node is not None else None
        if node is not None:
            components.append((path, kind, node))
    components += [(("eval", i), "evaluator", c) for i, c in enumerate(recipe.eval)]

    for path, kind, component in components:
        dotted = _dotted(path)
        plugin = registry.get(kind, component.name, where=f"{where}: {dotted}.name")
        try:
            configs[path] = plugin.Config.model_validate(component.params)
        except ValidationError as exc:
            raise _first_error(exc, plugin.Config, path, where, overrides) from None
    return ResolvedRecipe(recipe, configs, where)


def load_recipe(path: str | Path, registry: PluginRegistry, overrides: list[str] = ()) -> ResolvedRecipe:
    data = load_yaml(path)
    parsed = dict(parse_override(text) for text in overrides)
    apply_overrides(data, parsed)
    return resolve(data, registry, where=str(path), overrides=parsed)
