"""Describe Config models as text: for ``prefopt plugins`` and docs/recipe-reference.md."""

from __future__ import annotations

import types
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(annotation) -> str:
    """A readable type: ``Literal['sigmoid', 'hinge']``, ``int | None``, ``tuple[float, float]``.

    Spelled out from the parts, because ``__name__`` of a ``Literal`` is just
    "Literal" (hiding the allowed values) and ``str()`` spells module paths.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if annotation is type(None):
        return "None"
    if origin is not None and args:
        return f"{_type_name(origin)}[{', '.join(_type_name(arg) for arg in args)}]"
    qualname = getattr(annotation, "__qualname__", "")
    if isinstance(annotation, type) and "." in qualname and "<" not in qualname:
        return qualname  # a nested ``Config`` reads better as ``RandomRemoval.Config``
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


_REQUIRED = object()


def _default_value(field):
    """The field's default (a factory is called), or _REQUIRED."""
    if field.default is not PydanticUndefined:
        return field.default
    return _REQUIRED if field.default_factory is None else field.default_factory()


def _default(field) -> str:
    value = _default_value(field)
    if value is _REQUIRED:
        return "required"
    if isinstance(value, BaseModel):
        return "see section"
    return repr(value)


def _nested_model(annotation) -> type[BaseModel] | None:
    """The settings model of a nested section (``finetune: FinetuneConfig | None``), else None."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    others = [m for m in members if m is not type(None) and m not in models]
    return models[0] if len(models) == 1 and not others else None


def describe_fields(config: type[BaseModel], nested: bool = True, _prefix: str = "",
                    _defaults: BaseModel | None = None) -> list[str]:
    """One line per field: ``name: type = default  # description``.

    With ``nested``, a field that is itself a settings model (a backbone's
    ``finetune``) is followed by its own fields as ``finetune.rank: ...``, so
    every setting a recipe can write is listed; the defaults shown are those
    of the parent's default instance.
    """
    lines = []
    for name, field in config.model_fields.items():
        model = _nested_model(field.annotation) if nested else None
        if _defaults is not None:
            value = getattr(_defaults, name)
            default = "see below" if model is not None and value is not None else repr(value)
        else:
            value = _default_value(field)
            default = "see below" if model is not None and isinstance(value, BaseModel) else _default(field)
        line = f"{_prefix}{name}: {_type_name(field.annotation)} = {default}"
        if field.description:
            line += f"  # {field.description}"
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("recipe_path"):
            line += "  [path: from the recipe's folder]"
        lines.append(line)
        if model is not None:
            lines += describe_fields(
                model, nested=True, _prefix=f"{_prefix}{name}.",
                _defaults=value if isinstance(value, BaseModel) else None,
            )
    return lines or ["(no settings)"]


def recipe_reference_markdown(registry) -> str:
    """The whole recipe reference: top-level sections, then every plugin's Config."""
    from prefopt import recipe as recipe_module
    from prefopt.interfaces import KINDS

    out = [
        "# Recipe reference",
        "",
        "Generated from the pydantic models by `python -m prefopt.reference_doc`;",
        "do not edit by hand. Every field of every shipped plugin, with its default.",
        "",
        "**Relative paths.** A file or model a recipe reads (`pairs.prompts.path`, evaluator prompt and",
        "metadata files, `random_condition.prompts`, DD-CPP's `winner_policy`/`loser_policy`: every field",
        "marked *[path: from the recipe's folder]*) is found from the folder of the recipe file, whatever",
        "the working directory; a value with no such file that looks like `owner/name` stays a Hub id where",
        "the field takes one. The directories a run writes, `output_dir` and `pairs.dir`, are taken from the",
        "working directory, so `prefopt run recipes/toy2d_ddspo.yaml` in the project root writes",
        "`runs/toy2d_ddspo/` there. Fields that name a model by Hub id or directory (`backbone.pretrained`,",
        "evaluator and LLM model ids) are handed to diffusers / transformers as written, so a relative",
        "directory there is taken from the working directory too (it is usually another run's output).",
        "",
    ]
    sections = [
        ("top level", recipe_module.Recipe),
        ("train", recipe_module.TrainConfig),
        ("pairs", recipe_module.PairsConfig),
        ("pairs.prompts", recipe_module.PromptsConfig),
        ("pretrain", recipe_module.PretrainConfig),
        ("compare", recipe_module.CompareConfig),
    ]
    for title, model in sections:
        # Sub-sections have their own heading here, so they are not expanded inline.
        out += [f"## `{title}`", "", "```"] + describe_fields(model, nested=False) + ["```", ""]
    for kind in KINDS:
        out += [f"## {kind.replace('_', ' ')}s", ""]
        for name, cls in registry.all(kind).items():
            doc = (cls.__doc__ or "").strip().splitlines()
            out += [f"### `{name}`", "", doc[0] if doc else "", "", "```"]
            out += describe_fields(cls.Config) + ["```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    from pathlib import Path

    from prefopt.registry import PluginRegistry

    Path("docs/recipe-reference.md").write_text(recipe_reference_markdown(PluginRegistry()))
    print("wrote docs/recipe-reference.md")
