"""``prefopt export``: a LoRA run's final/ in the forms other tools load.

* ``merged``: the LoRA fused into the base model's weights, saved as a whole
  diffusers pipeline directory (``Pipeline.from_pretrained`` loads it; no
  adapter code needed). diffusers' own ``load_lora_weights`` + ``fuse_lora``.
* ``kohya``: the LoRA with kohya-ss / webui keys (``lora_unet_..._to_q.lora_down.weight``
  and an ``.alpha`` per module), the layout AUTOMATIC1111, ComfyUI and
  SD.Next read. diffusers' ``convert_unet_state_dict_to_peft`` and
  ``convert_state_dict_to_kohya`` do the renaming; the alpha is the adapter's own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from prefopt.errors import PrefoptError

LORA_FILE = "pytorch_lora_weights.safetensors"  # what the diffusers backbones' save() writes
TARGETS = ("merged", "kohya")
# safetensors metadata kohya-ss writes and webui UIs show; which base model a file is for.
KOHYA_BASE_VERSION = {"sd": "sd_v1", "sdxl": "sdxl_base_v1-0"}


def _run_backbone(run_dir: Path, registry) -> tuple[dict, type]:
    from prefopt.rundir import RESOLVED

    path = run_dir / RESOLVED
    if not path.is_file():
        raise PrefoptError(f"{run_dir} holds no run (no {RESOLVED})")
    section = yaml.safe_load(path.read_text())["backbone"]
    cls = registry.get("backbone", section["name"], where=str(path))
    if not hasattr(cls, "pipeline_class"):
        raise PrefoptError(f"the {section['name']} backbone does not save a diffusers pipeline; nothing to export")
    return section, cls


def _lora_of(run_dir: Path) -> Path:
    from prefopt.model_card import check_final

    final = run_dir / "final"
    if not final.is_dir():
        raise PrefoptError(f"{run_dir} has no final/ to export; finish the run first (prefopt run RECIPE)")
    lora = final / LORA_FILE
    if not lora.is_file():
        raise PrefoptError(f"{final} is not a LoRA (no {LORA_FILE}): a fully fine-tuned run's final/ "
                           "is a whole diffusers pipeline already")
    check_final(final)
    return lora


def _claim(output: Path, overwrite: bool) -> Path:
    """A temporary sibling of ``output`` to write into; ``output`` itself is replaced only at the end."""
    if output.exists() and not overwrite:
        raise PrefoptError(f"{output} already exists; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    tmp.unlink(missing_ok=True)
    return tmp


def _replace(tmp: Path, output: Path) -> None:
    if output.is_dir():
        shutil.rmtree(output)
    tmp.replace(output)


def export_merged(run_dir: Path, registry, output: Path | None = None, overwrite: bool = False) -> Path:
    """The base pipeline with the run's LoRA fused into its weights, as a diffusers pipeline directory."""
    import diffusers

    run_dir = Path(run_dir)
    section, cls = _run_backbone(run_dir, registry)
    lora = _lora_of(run_dir)
    output = Path(output or run_dir / "export" / "merged")
    tmp = _claim(output, overwrite)
    pipeline_cls = getattr(diffusers, cls.pipeline_class)
    extra = {}
    if section.get("vae_pretrained"):  # the run's own VAE, as its backbone loaded it
        extra["vae"] = diffusers.AutoencoderKL.from_pretrained(section["vae_pretrained"])
    try:
        pipeline = pipeline_cls.from_pretrained(section["pretrained"], revision=section.get("revision"),
                                                variant=section.get("variant"), **extra)
    except (OSError, ValueError) as exc:
        raise PrefoptError(f"cannot load the base model {section['pretrained']}: {exc}") from exc
    pipeline.load_lora_weights(str(lora.parent), weight_name=LORA_FILE)
    pipeline.fuse_lora()
    pipeline.unload_lora_weights()  # the fused weights stay; the adapter layers go
    try:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        _replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    section, cls = _run_backbone(run_dir, registry)
    if section["name"] not in KOHYA_BASE_VERSION:
        raise PrefoptError(f"kohya export is for sd and sdxl LoRAs, not {section['name']!r}; "
                           "use the diffusers LoRA in final/ or --to merged")
    lora = _lora_of(run_dir)
    state, info = kohya_state_dict(lora)
    info["ss_base_model_version"] = KOHYA_BASE_VERSION[section["name"]]
    output = Path(output or run_dir / "export" / f"{run_dir.name}_kohya.safetensors")
    tmp = _claim(output, overwrite)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=info)
        _replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return output


def export_run(run_dir: Path, to: str, registry, output: Path | None = None, overwrite: bool = False) -> Path:
    if to not in TARGETS:
        raise PrefoptError(f"--to {to!r}: one of {', '.join(TARGETS)}")
    return (export_merged if to == "merged" else export_kohya)(run_dir, registry, output, overwrite)
