"""``prefopt export``: a LoRA run's final/ in the forms other tools load.

* ``merged``: the LoRA fused into the base model's weights, saved as a whole
  diffusers pipeline directory (``Pipeline.from_pretrained`` loads it; no
  adapter code needed). diffusers' own ``load_lora_weights`` + ``fuse_lora``.
* ``kohya``: the LoRA with kohya-ss / webui keys (``lora_unet_..._to_q.lora_down.weight``
  and an ``.alpha`` per module), the layout AUTOMATIC1111, ComfyUI and
  SD.Next read. diffusers' ``convert_unet_state_dict_to_peft`` and
  ``convert_state_dict_to_kohya`` do the renaming; the alpha is the adapter's own.

The export is written under a temporary name beside ``--output`` and renamed
into place when whole. ``--overwrite`` replaces only what an export would have
written there: a file with a file (kohya), a previous merged export with a
merged export; never a directory with a file or the other way round, and never
the working directory, a directory holding it, a home or the root.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from prefopt.errors import PrefoptError, file_errors

LORA_FILE = "pytorch_lora_weights.safetensors"  # what the diffusers backbones' save() writes
TARGETS = ("merged", "kohya")
# safetensors metadata kohya-ss writes and webui UIs show; which base model a file is for.
KOHYA_BASE_VERSION = {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0"}
# What every diffusers pipeline directory holds: the mark of a previous merged export.
PIPELINE_INDEX = "model_index.json"


def _run_backbone(run_dir: Path, registry) -> tuple[dict, type]:
    from prefopt.rundir import RESOLVED, read_resolved

    path = run_dir / RESOLVED
    section = read_resolved(run_dir)["backbone"]
    if not isinstance(section.get("name"), str):
        raise PrefoptError(f"{path} is damaged (backbone.name is not a name)")
    cls = registry.get("backbone", section["name"], where=str(path))
    if not hasattr(cls, "pipeline_class"):
        raise PrefoptError(f"the {section['name']} backbone does not save a diffusers pipeline; nothing to export")
    return section, cls


def _setting(section: dict, key: str, run_dir: Path, required: bool = False) -> str | None:
    """A name or path of the resolved recipe's backbone section; a missing or mistyped one is one line."""
    from prefopt.rundir import RESOLVED

    value = section.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        problem = "is missing" if value is None else "is not a name or path"
        raise PrefoptError(f"{run_dir / RESOLVED} is damaged (backbone.{key} {problem}); "
                           "start the run again with --overwrite")
    return value


def _lora_of(run_dir: Path) -> Path:
    from prefopt.rundir import FINAL_REPAIR, verify_final

    final = run_dir / "final"
    lora = final / LORA_FILE
    if not lora.is_file():
        raise PrefoptError(f"{final} is not a LoRA (no {LORA_FILE}): a fully fine-tuned run's final/ "
                           "is a whole diffusers pipeline already")
    # As eval does: an unsealed final/ (not written whole) or a changed file is refused, never exported.
    verify_final(final, repair=FINAL_REPAIR)
    return lora


def _output(output: Path | None, default: Path) -> Path:
    """``--output`` as an absolute path; ``.`` and ``..`` folded, so the output has a name to write beside."""
    # os.path.abspath, not resolve(): a link the user named stays the link, and is refused as one.
    return Path(os.path.abspath(output if output is not None else default))


def _refuse_precious(output: Path) -> None:
    """--overwrite of a directory never reaches the working directory, a directory holding it, a home or the root."""
    # rundir.refuse_to_clear's rule, in export's words.
    target, cwd = output.resolve(), Path.cwd().resolve()
    if target in {Path("/"), Path.home().resolve()} or cwd.is_relative_to(target):
        raise PrefoptError(f"--overwrite would replace {output}, which is the working directory, holds it, "
                           "or is a home directory or the root; choose another --output")


def _check_output(output: Path, run_dir: Path, overwrite: bool, directory: bool) -> None:
    """Refuse an ``--output`` that this export may not write, or replace, before any work is done.

    ``directory``: the export is a pipeline directory (merged), else one file (kohya).
    """
    from prefopt.rundir import refuse_links_between

    refuse_links_between(run_dir, output)  # the default, RUN_DIR/export/..., never leads out through a link
    target, run = output.resolve(), run_dir.resolve()
    if target.is_relative_to(run / "final") or run.is_relative_to(target):
        # Writing into final/ breaks its integrity record; replacing the run's own directory loses the run.
        raise PrefoptError(f"--output {output} is the run's final/, inside it, or holds the run; "
                           "write the export elsewhere")
    if not os.path.lexists(output):
        return
    if output.is_symlink():
        raise PrefoptError(f"--output {output} is a symbolic link; name the export's own path")
    if directory and not output.is_dir():
        raise PrefoptError(f"--output {output} exists and is not a directory; --to merged writes a pipeline "
                           "directory and never replaces a file with one")
    if not directory and not output.is_file():
        hint = f" (e.g. --output {output / f'{run.name}_kohya.safetensors'})" if output.is_dir() else ""
        raise PrefoptError(f"--output {output} exists and is not a regular file; --to kohya writes one file "
                           f"and replaces only a file{hint}")
    if not overwrite:
        raise PrefoptError(f"{output} already exists; pass --overwrite to replace it")
    if directory:
        _refuse_precious(output)
        with file_errors(output, "list"):
            empty = not any(output.iterdir())
        if not (empty or (output / PIPELINE_INDEX).is_file()):
            raise PrefoptError(f"--overwrite replaces only a previous merged export, and {output} is not one "
                               f"(no {PIPELINE_INDEX}); choose another --output")


def _make_parent(output: Path) -> None:
    with file_errors(output.parent, "create"):
        output.parent.mkdir(parents=True, exist_ok=True)


def _write_failure(exc: BaseException, output: Path) -> PrefoptError:
    from prefopt.atomic import write_failure

    return PrefoptError(f"could not write {output}: {write_failure(exc, output.parent)}")


def export_merged(run_dir: Path, registry, output: Path | None = None, overwrite: bool = False) -> Path:
    """The base pipeline with the run's LoRA fused into its weights, as a diffusers pipeline directory."""
    import diffusers

    from prefopt.atomic import replace_dir

    run_dir = Path(run_dir)
    section, cls = _run_backbone(run_dir, registry)
    pretrained = _setting(section, "pretrained", run_dir, required=True)
    revision, variant = _setting(section, "revision", run_dir), _setting(section, "variant", run_dir)
    vae_pretrained = _setting(section, "vae_pretrained", run_dir)
    lora = _lora_of(run_dir)
    output = _output(output, run_dir / "export" / "merged")
    _check_output(output, run_dir, overwrite, directory=True)
    for source in (pretrained, vae_pretrained):  # a local base model is a pipeline directory too
        if source and os.path.exists(source) and Path(source).resolve().is_relative_to(output.resolve()):
            raise PrefoptError(f"--output {output} holds the base model {source} that the export reads; "
                               "write the export elsewhere")

    pipeline_cls = getattr(diffusers, cls.pipeline_class)
    try:
        extra = {}
        if vae_pretrained:  # the run's own VAE, as its backbone loaded it
            extra["vae"] = diffusers.AutoencoderKL.from_pretrained(vae_pretrained)
        pipeline = pipeline_cls.from_pretrained(pretrained, revision=revision, variant=variant, **extra)
    except (OSError, ValueError) as exc:
        raise PrefoptError(f"cannot load the base model {pretrained}: {exc}") from exc
    try:
        pipeline.load_lora_weights(str(lora.parent), weight_name=LORA_FILE)
    except (ValueError, KeyError, RuntimeError) as exc:  # a LoRA for other weights than the base's now
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise PrefoptError(f"the LoRA in {lora.parent} does not fit the base model {pretrained}: {reason}") from exc
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()  # the fused weights stay; the adapter layers go

    _make_parent(output)
    # A new directory of its own beside the output (a rename into place stays on one file system),
    # made by mkdtemp: never a leftover, nor a link planted at a name that could be guessed.
    with file_errors(output.parent, "write"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would make the export private to this user
    try:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        replace_dir(tmp, output)  # the old export is whole under its name until the new one takes it
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, PrefoptError) or not isinstance(exc, Exception):
            raise
        raise _write_failure(exc, output) from exc
    return output


def kohya_state_dict(lora: Path) -> tuple[dict, dict[str, str]]:
    """The saved LoRA's tensors with kohya keys, and kohya's metadata (rank and alpha)."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(str(lora))
    with safe_open(str(lora), "pt") as handle:
        metadata = handle.metadata() or {}
    adapter = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    rank, alpha = adapter.get("unet.r"), adapter.get("unet.lora_alpha")
    if rank is None or alpha is None or adapter.get("unet.rank_pattern") or adapter.get("unet.alpha_pattern"):
        raise PrefoptError(f"{lora} does not record one rank and alpha for the UNet; cannot write kohya alphas")
    # diffusers keys (unet.<module>.lora.down.weight) -> peft keys (lora_A) -> kohya keys (lora_unet_<module>).
    unet = {key.removeprefix("unet."): value for key, value in state.items() if key.startswith("unet.")}
    if len(unet) != len(state):
        raise PrefoptError(f"{lora} holds weights besides the UNet's; only UNet LoRAs export to kohya")
    peft = {f"unet.{key}": value for key, value in convert_unet_state_dict_to_peft(unet).items()}
    kohya = convert_state_dict_to_kohya(peft)
    for key in kohya:
        if key.endswith(".alpha"):  # the converter writes alpha = rank; a webui scales by alpha / rank
            kohya[key] = torch.tensor(float(alpha))
    info = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": f"{float(alpha):g}"}
    return kohya, info


def export_kohya(run_dir: Path, registry, output: Path | None = None, overwrite: bool = False) -> Path:
    """The run's LoRA as one kohya-layout safetensors file."""
    from safetensors.torch import save

    from prefopt.atomic import write_atomic

    run_dir = Path(run_dir)
    section, cls = _run_backbone(run_dir, registry)
    if section["name"] not in KOHYA_BASE_VERSION:
        raise PrefoptError(f"kohya export is for sd and sdxl LoRAs, not {section['name']!r}; "
                           "use the diffusers LoRA in final/ or --to merged")
    lora = _lora_of(run_dir)
    name = Path(os.path.abspath(run_dir)).name  # `prefopt export .` names the file after the directory
    output = _output(output, run_dir / "export" / f"{name}_kohya.safetensors")
    _check_output(output, run_dir, overwrite, directory=False)
    state, info = kohya_state_dict(lora)
    info["ss_base_model_version"] = KOHYA_BASE_VERSION[section["name"]]
    data = save({k: v.contiguous() for k, v in state.items()}, metadata=info)  # a LoRA: small enough to hold
    _make_parent(output)
    try:
        write_atomic(output, data)  # whole or not at all; the old file stays until the new one is complete
    except OSError as exc:
        raise _write_failure(exc, output) from exc
    return output


def export_run(run_dir: Path, to: str, registry, output: Path | None = None, overwrite: bool = False) -> Path:
    from prefopt.locking import hold

    if to not in TARGETS:
        raise PrefoptError(f"--to {to!r}: one of {', '.join(TARGETS)}")
    if not (Path(run_dir) / "final").is_dir():  # before the lock, which would create a missing directory
        raise PrefoptError(f"{run_dir} has no final/ to export; finish the run first (prefopt run RECIPE)")
    # Held as eval holds it: no `prefopt run --overwrite` may clear final/ while it is read,
    # nor the run directory while the default export is written into it.
    with hold(run_dir, "run directory"):
        return (export_merged if to == "merged" else export_kohya)(run_dir, registry, output, overwrite)
