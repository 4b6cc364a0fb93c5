"""What the diffusers backbones share: loading, reference and policies, sampling, saving.

A family (sd, sdxl, sana) names its pipeline class, its components and its
denoiser, and implements its forward process, prompt encoding and denoiser
call; everything else lives here. This module imports no torch at top level
(plugin classes must stay importable by ``prefopt validate``): heavy modules are
imported inside the methods that need them.

Sources of predictions and samples:

* ``student``: the trained denoiser (the module accelerate prepared).
* ``reference``: the frozen starting point. LoRA fine-tuning: the student's
  own module with every adapter off (one copy of the weights), called through
  accelerate's wrapper like the student. Full fine-tuning: a frozen copy,
  loaded from the pretrained files when first asked for (never, for an
  objective that asks for no reference prediction) and freed when training
  starts without needing it.
* an extra policy name (DD-CPP): a saved LoRA loaded as a named adapter on
  the module that carries the reference, active only for its predictions.

Idle modules: pairs are stored as latents, so training never uses the VAE,
nor the text encoders once prompts come from a text cache. ``release_idle``
moves them off the accelerator (on a CPU device: frees them); sampling,
decoding, encoding and saving bring them back first.

Data space: (latents − the VAE's ``shift_factor``, where it has one: SD3, FLUX)
× its ``scaling_factor`` (as diffusers' training scripts store them, and as
pipelines return them with ``output_type="latent"``), or pixels in [-1, 1] for
a model without a VAE.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ClassVar, Sequence

from prefopt.errors import PrefoptError
from prefopt.interfaces import REFERENCE, STUDENT, Backbone, Cond, Runtime

# Images per VAE call in encode_data / decode: bounds memory at high resolution.
VAE_CHUNK = 8
# The file diffusers' save_lora_weights writes (diffusers.loaders.lora_base.LORA_WEIGHT_NAME_SAFE).
LORA_FILE = "pytorch_lora_weights.safetensors"


def _shift_factor(vae) -> float:
    """The VAE's latent shift (SD3's and FLUX's autoencoders have one; SD's and DC-AE's none)."""
    return vae.config.get("shift_factor") or 0.0


class DiffusersBackbone(Backbone):
    """Base of the diffusers backbones (not registered itself)."""

    pipeline_class: ClassVar[str]  # diffusers pipeline the family's weights load into
    denoiser_name: ClassVar[str]  # pipeline argument, subfolder and LoRA key prefix
    # pipeline argument (= subfolder) -> (library, class); tokenizers use AutoTokenizer.
    component_classes: ClassVar[dict[str, tuple[str, str]]]
    vae_blocks_key: ClassVar[str] = "block_out_channels"  # VAE config key whose length sets the downsampling
    lora_diffusers_format: ClassVar[bool] = True  # key format of the family's diffusers LoRA script

    def __init__(self, config=None):
        super().__init__(config)
        self.runtime: Runtime | None = None
        self.modules: dict[str, Any] = {}  # pipeline components (no scheduler); the denoiser is the student
        self._scheduler_config: dict[str, Any] = {}
        self._trainable = None  # the student as accelerate handed it back
        self._reference_module = None  # module that gives reference and policy predictions (None: not loaded yet)
        self._policies: set[str] = set()
        self._policy_paths: dict[str, str] = {}
        self._pipelines: list = []  # (denoiser, its sampling pipeline), one per denoiser (built once)
        self._offloaded: set[str] = set()  # idle components moved to host memory
        self._freed: set[str] = set()  # idle components dropped, reloaded when next needed

    # ------------------------------------------------------------------ family hooks

    def _pixel_space(self) -> bool:
        """True for a model without a VAE: data are pixels."""
        return False

    def _components(self) -> dict[str, tuple[str, str] | None]:
        """Components to load; None for one this configuration has no use for."""
        return dict(self.component_classes)

    def _setup_forward_process(self) -> None:
        """Build what the forward process needs from ``self._scheduler_config``."""
        raise NotImplementedError

    def _scheduler_overrides(self) -> dict[str, Any]:
        """Scheduler config values the Config overrides (e.g. prediction_type)."""
        return {}

    def _forward(self, module, x_t, t, cond: Cond):
        """One denoiser call on (x_t, t, cond) -> the prediction.

        ``x_t`` and the floating tensors of ``cond`` are already in the dtype of
        ``module``'s weights.
        """
        raise NotImplementedError

    def _pipeline_extras(self) -> dict[str, Any]:
        """Pipeline constructor arguments beyond the components (safety checker off, ...)."""
        return {}

    def _sample_kwargs(self) -> dict[str, Any]:
        """Pipeline call arguments beyond prompts, steps, guidance, size and seeds."""
        return {}

    def _vae_latent(self, vae, pixels):
        """The VAE's (unscaled) latent of pixels in [-1, 1]."""
        raise NotImplementedError

    def _describe_process(self) -> dict[str, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ loading

    def load(self, runtime: Runtime, policies: dict[str, str] | None = None) -> None:
        from prefopt_backbones import loading, lora

        cfg = self.config
        self.runtime = runtime
        full = runtime.train and cfg.finetune.mode == "full"
        # Any scheduler class reads scheduler_config.json; which one it names is kept in _class_name.
        self._scheduler_config = loading.load_config(
            "diffusers", "DDPMScheduler", cfg.pretrained, "scheduler", cfg.revision
        )
        self._setup_forward_process()
        self.modules = self._load_modules(full)
        denoiser = self.modules[self.denoiser_name]
        loading.set_attention(denoiser, cfg.attention, runtime.device)

        self._reference_module = denoiser
        if full:
            # The frozen reference is loaded when first asked for (_get_reference_module); policies live on it.
            self._reference_module = self._frozen_reference(denoiser).to(runtime.device) if policies else None
            denoiser.requires_grad_(True)
        elif runtime.train:
            lora.add_student_adapter(denoiser, cfg.finetune)
        if runtime.train and cfg.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        self._load_policies(policies or {})

        for module in self.modules.values():
            if hasattr(module, "to"):
                module.to(runtime.device)
        self._trainable = denoiser
        self._pipelines = []
        self._offloaded, self._freed = set(), set()

    def _frozen_reference(self, denoiser=None):
        """The full fine-tuning reference: a frozen copy of ``denoiser`` (as loaded, untrained),
        or the pretrained weights read again."""
        from prefopt_backbones import loading

        cfg = self.config
        dtype = loading.torch_dtype(cfg.denoiser_dtype, self.runtime.dtype, trainable=False)
        if denoiser is not None and loading.input_dtype(denoiser) == dtype:
            return loading.frozen_copy(denoiser)
        # In another dtype: load it again, so diffusers keeps in float32 what must stay so.
        library, class_name = self.component_classes[self.denoiser_name]
        reference = loading.load_model(library, class_name, *self._location(self.denoiser_name), dtype)
        loading.set_attention(reference, cfg.attention, self.runtime.device)
        return reference

    def _load_modules(self, full: bool) -> dict[str, Any]:
        from prefopt_backbones import loading

        cfg = self.config
        modules: dict[str, Any] = {}
        for name, spec in self._components().items():
            if spec is None:
                modules[name] = None
                continue
            library, class_name = spec
            if class_name == "AutoTokenizer":
                modules[name] = loading.load_tokenizer(cfg.pretrained, name, cfg.revision)
                continue
            trained = full and name == self.denoiser_name
            dtype = loading.torch_dtype(self._dtype_setting(name), self.runtime.dtype, trained)
            modules[name] = loading.load_model(library, class_name, *self._location(name), dtype)
        return modules

    def _location(self, name: str) -> tuple[str, str | None, str | None, str | None]:
        """(repo or directory, subfolder, revision, variant) a component loads from."""
        cfg = self.config
        if name == "vae" and cfg.vae_pretrained:  # a standalone VAE repo: none of the pipeline's revision/variant
            return cfg.vae_pretrained, None, None, None
        return cfg.pretrained, name, cfg.revision, cfg.variant

    def _dtype_setting(self, name: str) -> str:
        cfg = self.config
        if name == self.denoiser_name:
            return cfg.denoiser_dtype
        if name.startswith("text_encoder"):
            return cfg.text_encoder_dtype
        return cfg.vae_dtype

    def _load_policies(self, policies: dict[str, str]) -> None:
        from prefopt_backbones import lora

        for name, path in policies.items():
            if name in (STUDENT, REFERENCE, lora.STUDENT_ADAPTER):
                raise PrefoptError(f"a policy cannot be named {name!r} (reserved)")
            lora.load_policy(self._reference_module, name, path, prefix=self.denoiser_name)
        self._policies = set(policies)
        self._policy_paths = dict(policies)

    def _require_loaded(self) -> None:
        if self.runtime is None:
            raise PrefoptError(f"backbone {self.name!r} is used before load()")

    # ------------------------------------------------------------------ the trained module

    def trainable_module(self):
        self._require_loaded()
        if not self.runtime.train:
            raise PrefoptError(f"backbone {self.name!r} was loaded for sampling only (Runtime.train is false)")
        return self.modules[self.denoiser_name]

    def set_trainable_module(self, module) -> None:
        self._trainable = module

    def adopt_student_state(self, state_dict) -> None:
        """Take the student's full weights, gathered from a sharded module (FSDP, ZeRO-3), into a
        plain module for saving and sampling: the denoiser read again with the student's adapter,
        the gathered weights loaded into it (the sharded original cannot run on one process)."""
        from prefopt_backbones import loading, lora

        cfg = self.config
        full = cfg.finetune.mode == "full"
        library, class_name = self.component_classes[self.denoiser_name]
        dtype = loading.torch_dtype(cfg.denoiser_dtype, self.runtime.dtype, trainable=full)
        denoiser = loading.load_model(library, class_name, *self._location(self.denoiser_name), dtype)
        loading.set_attention(denoiser, cfg.attention, self.runtime.device)
        if not full:
            lora.add_student_adapter(denoiser, cfg.finetune)
        denoiser.load_state_dict(state_dict)
        denoiser.to(self.runtime.device)
        reference_on_student = self._reference_module is self.modules[self.denoiser_name]
        self.modules[self.denoiser_name] = self._trainable = denoiser
        if reference_on_student:  # the reference and policies live on the student's module
            self._reference_module = denoiser
            self._load_policies(self._policy_paths)
        self._pipelines = []

    def _student(self):
        """The student without accelerate's wrapper (for pipelines, adapters and saving)."""
        from accelerate.utils import extract_model_from_parallel

        return extract_model_from_parallel(self._trainable)

    def _get_reference_module(self):
        """The module that carries the reference (and policies); a full fine-tune's is loaded on first use."""
        if self._reference_module is None:
            self._reference_module = self._frozen_reference().to(self.runtime.device)
        return self._reference_module

    def _frozen_source(self, source: str):
        """(module, context) that give ``source``'s predictions, which are never trained."""
        from prefopt_backbones import lora

        if source == REFERENCE:
            host = self._get_reference_module()
            return host, lora.adapters_disabled(host)
        if source in self._policies:
            return self._reference_module, lora.only_adapter(self._reference_module, source)
        known = ", ".join([STUDENT, REFERENCE, *sorted(self._policies)])
        raise PrefoptError(f"backbone {self.name!r} has no prediction source {source!r} (loaded: {known})")

    # ------------------------------------------------------------------ predictions

    def predict(self, x_t, t, cond: Cond, source: str):
        if source == STUDENT:
            return self._call(self._trainable, x_t, t, cond)
        import torch

        module, context = self._frozen_source(source)
        if module is self.modules[self.denoiser_name]:
            # A LoRA student's reference (and policies) is its own module with adapters switched: call
            # it through accelerate's wrapper, as the student is, so that a sharded module (FSDP,
            # DeepSpeed ZeRO-3) gathers its weights for this forward too.
            module = self._trainable
        with torch.no_grad(), context:
            return self._call(module, x_t, t, cond)

    def _call(self, module, x_t, t, cond: Cond):
        """``_forward`` on inputs cast to the dtype of the module's weights (integer masks and ids stay)."""
        from prefopt_backbones.loading import cast_floats, input_dtype

        dtype = input_dtype(module)
        return self._forward(module, x_t.to(dtype), t, cast_floats(cond, dtype))

    # ------------------------------------------------------------------ idle modules

    def release_idle(self, sources, text_cached: bool) -> None:
        """Before training: free the accelerator memory of what training will not use.

        The VAE (pairs are latents), the text encoders when prompts come from a
        text cache, and a full fine-tune's frozen reference when no prediction
        comes from ``REFERENCE``. On an accelerator the VAE and text encoders
        move to host memory; on a CPU device, and the reference everywhere,
        they are freed. Whatever needs them later brings them back.
        """
        import gc

        idle = [] if self._pixel_space() else ["vae"]
        if text_cached:
            idle += self._text_encoder_names()
        for name in idle:
            module = self.modules.get(name)
            if module is None or name in self._offloaded:
                continue
            if self.runtime.device.type == "cpu":
                self.modules[name] = None
                self._freed.add(name)
            else:
                module.to("cpu")
                self._offloaded.add(name)
        if self._freed:  # the cached pipelines hold the freed modules
            self._pipelines = []
        reference_idle = REFERENCE not in set(sources) and not self._policies
        if reference_idle and self._reference_module is not None and self._reference_module is not self.modules[self.denoiser_name]:
            self._reference_module = None
        gc.collect()
        if self.runtime.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _text_encoder_names(self) -> list[str]:
        return [name for name, spec in self._components().items() if spec and name.startswith("text_encoder")]

    def _bring_back(self, names) -> None:
        """Idle components back on the device: moved back, or reloaded from their pretrained files."""
        from prefopt_backbones import loading

        reloaded = False
        for name in names:
            if name in self._offloaded:
                self.modules[name].to(self.runtime.device)
                self._offloaded.discard(name)
            elif name in self._freed:
                library, class_name = self._components()[name]
                dtype = loading.torch_dtype(self._dtype_setting(name), self.runtime.dtype, trainable=False)
                model = loading.load_model(library, class_name, *self._location(name), dtype)
                self.modules[name] = model.to(self.runtime.device)
                self._freed.discard(name)
                reloaded = True
        if reloaded:  # pipelines built without the module
            self._pipelines = []

    @property
    def _text_pipeline(self):
        """The pipeline whose ``encode_prompt`` the families call (its text encoders on the device)."""
        self._bring_back(self._text_encoder_names())
        return self._sampling_pipeline(self.modules[self.denoiser_name])

    # ------------------------------------------------------------------ pipelines and sampling

    def _scheduler(self, class_name: str | None):
        """A diffusers scheduler built from the model's scheduler config."""
        import diffusers

        name = class_name or self._scheduler_config["_class_name"]
        cls = getattr(diffusers, name, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise PrefoptError(f"backbone.sampler: {name!r} is not a diffusers scheduler class")
        return cls.from_config(self._scheduler_config, **self._scheduler_overrides())

    def _pipeline(self, denoiser, scheduler_class: str | None = None):
        """The family's diffusers pipeline around the loaded components and ``denoiser``."""
        import diffusers

        pipeline_cls = getattr(diffusers, self.pipeline_class)
        scheduler = self._scheduler(scheduler_class or self.config.sampler)
        components = {**self.modules, self.denoiser_name: denoiser}
        pipeline = pipeline_cls(**components, scheduler=scheduler, **self._pipeline_extras())
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _sampling_pipeline(self, denoiser):
        """The pipeline with the configured sampler around ``denoiser``, built on first use and kept.

        With ``compile_sampling`` the pipeline calls a compiled wrapper of ``denoiser``: the
        module itself stays eager, so training's forwards and saved weights are untouched.
        """
        for module, pipeline in self._pipelines:
            if module is denoiser:
                return pipeline
        if self.config.compile_sampling:
            from prefopt.engine.speed import compiled_for_sampling

            pipeline = self._pipeline(compiled_for_sampling(denoiser))
        else:
            pipeline = self._pipeline(denoiser)
        self._pipelines.append((denoiser, pipeline))
        return pipeline

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], source: str = REFERENCE):
        """x0 in data space, one row per prompt, through the family's diffusers pipeline.

        Each row's starting noise comes from its own CPU generator seeded by its
        seed, so a row is the same whatever batch or device it is drawn on.
        """
        import torch

        self._require_loaded()
        if len(prompts) != len(seeds):
            raise ValueError(f"sample: {len(prompts)} prompts but {len(seeds)} seeds")
        self._bring_back(self._offloaded | self._freed)
        module, context = (self._student(), nullcontext()) if source == STUDENT else self._frozen_source(source)
        pipeline = self._sampling_pipeline(module)
        size = self._resolution()
        was_training = module.training
        module.eval()
        try:
            with context:
                out = pipeline(
                    prompt=list(prompts),
                    num_inference_steps=self.config.num_inference_steps,
                    guidance_scale=self.config.guidance_scale,
                    generator=[torch.Generator().manual_seed(int(seed)) for seed in seeds],
                    height=size,
                    width=size,
                    output_type="latent",
                    **self._sample_kwargs(),
                )
        finally:
            module.train(was_training)
        return out.images.float()

    # ------------------------------------------------------------------ data space

    def _config_of(self, name: str) -> dict[str, Any]:
        """A diffusers component's config: the loaded one, or read from disk / hub without weights."""
        from prefopt_backbones import loading

        if self.modules.get(name) is not None:
            return dict(self.modules[name].config)
        library, class_name = self.component_classes[name]
        source, subfolder, revision, _ = self._location(name)
        return loading.load_config(library, class_name, source, subfolder, revision)

    def _downsampling(self) -> int:
        if self._pixel_space():
            return 1
        return 2 ** (len(self._config_of("vae")[self.vae_blocks_key]) - 1)

    def _resolution(self) -> int:
        factor = self._downsampling()
        size = self.config.resolution or self._config_of(self.denoiser_name)["sample_size"] * factor
        if size % factor:
            raise PrefoptError(f"backbone.resolution {size} is not a multiple of the VAE's downsampling {factor}")
        return size

    def data_signature(self) -> dict[str, Any]:
        """Family, data space and shape (and latent scale): what a pair dataset must match.

        The pretrained id is left out on purpose: latents of one family and VAE
        are valid for every fine-tune of it, so one dataset serves them all.
        """
        size = self._resolution() // self._downsampling()
        if self._pixel_space():
            channels = self._config_of(self.denoiser_name)["in_channels"]
            return {"family": self.name, "data_space": "pixel", "data_shape": [channels, size, size]}
        vae = self._config_of("vae")
        identity = {
            "family": self.name,
            "data_space": "latent",
            "data_shape": [vae["latent_channels"], size, size],
            "latent_scaling_factor": vae["scaling_factor"],
        }
        if vae.get("shift_factor"):
            identity["latent_shift_factor"] = vae["shift_factor"]
        return identity

    def encode_data(self, items: Sequence[Any]):
        """Images (PIL, bytes, paths, HWC arrays) to data space; tensors are taken as data already."""
        import torch

        from prefopt.errors import DataError
        from prefopt_backbones import images

        self._require_loaded()
        shape = list(self.data_signature()["data_shape"])
        out: list = [None] * len(items)
        pending = []
        for i, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                if list(item.shape) != shape:
                    raise DataError(f"given x0 tensor has shape {list(item.shape)}; this backbone's data is {shape}")
                out[i] = item.float()
            else:
                pending.append(i)
        size = self._resolution()
        for start in range(0, len(pending), VAE_CHUNK):
            rows = pending[start : start + VAE_CHUNK]
            pixels = images.to_pixels([items[i] for i in rows], size)
            for i, x in zip(rows, self._pixels_to_data(pixels)):
                out[i] = x
        return torch.stack([x.to("cpu", torch.float32) for x in out]) if out else torch.empty(0, *shape)

    def _pixels_to_data(self, pixels):
        import torch

        if self._pixel_space():
            return pixels
        self._bring_back(["vae"])
        vae = self.modules["vae"]
        with torch.no_grad():
            latent = self._vae_latent(vae, pixels.to(self.runtime.device, vae.dtype))
        return (latent.float() - _shift_factor(vae)) * vae.config.scaling_factor

    def decode(self, data) -> list:
        """Data-space tensors (N, C, H, W) to PIL images."""
        import torch

        from prefopt_backbones import images

        self._require_loaded()
        if self._pixel_space():
            return images.to_pil(data)
        self._bring_back(["vae"])
        vae = self.modules["vae"]
        out = []
        with torch.no_grad():
            for chunk in data.split(VAE_CHUNK):
                latent = chunk.to(self.runtime.device, vae.dtype) / vae.config.scaling_factor + _shift_factor(vae)
                out += images.to_pil(vae.decode(latent).sample)
        return out

    # ------------------------------------------------------------------ saving

    def save(self, directory: str) -> None:
        """Write the student in the form the family's diffusers pipeline loads.

        A student with an adapter: the adapter alone, as ``Pipeline.load_lora_weights``
        reads it (rank and alpha in its metadata). A fully trained student: a whole
        pipeline directory for ``Pipeline.from_pretrained``.
        """
        from prefopt_backbones import lora

        self._require_loaded()
        student = self._student()
        if lora.has_student_adapter(student):
            import diffusers

            getattr(diffusers, self.pipeline_class).save_lora_weights(
                directory,
                safe_serialization=True,
                **{
                    f"{self.denoiser_name}_lora_layers": lora.student_state_dict(student, self.lora_diffusers_format),
                    f"{self.denoiser_name}_lora_adapter_metadata": lora.student_metadata(student),
                },
            )
            return
        # The saved pipeline keeps the model's own scheduler, not the pair sampler.
        self._bring_back(self._offloaded | self._freed)
        pipeline = self._pipeline(student, scheduler_class=self._scheduler_config["_class_name"])
        pipeline.save_pretrained(directory, safe_serialization=True)

    def load_trained(self, directory: str) -> None:
        """Load a save() output into the student; the reference stays the model load() read.

        A directory with model_index.json is a full pipeline (its denoiser's
        weights replace the student's); one with a LoRA file becomes the
        student's adapter, with the rank and alpha it was saved with.
        """
        from pathlib import Path

        from prefopt_backbones import loading, lora

        self._require_loaded()
        path = Path(directory)
        denoiser = self.modules[self.denoiser_name]
        if (path / LORA_FILE).is_file():
            lora.replace_student_adapter(denoiser, str(path), prefix=self.denoiser_name)
            return
        if not (path / "model_index.json").is_file():
            raise PrefoptError(f"{path} holds neither a diffusers pipeline (model_index.json) nor a LoRA ({LORA_FILE})")
        if lora.has_student_adapter(denoiser):
            raise PrefoptError(f"{path} is a fully fine-tuned pipeline; load it with backbone.finetune.mode: full")
        if self._reference_module is denoiser:  # loaded for sampling only: keep the reference apart before overwriting
            self._reference_module = loading.frozen_copy(denoiser)
        library, class_name = self.component_classes[self.denoiser_name]
        dtype = loading.input_dtype(denoiser)
        trained = loading.load_model(library, class_name, str(path), self.denoiser_name, None, None, dtype)
        denoiser.load_state_dict(trained.state_dict())

    # ------------------------------------------------------------------ dry runs

    def describe(self) -> dict[str, Any]:
        """What load() would load and train, from the Config alone (nothing is read or downloaded)."""
        cfg = self.config
        finetune = cfg.finetune
        components = {}
        for name, spec in self._components().items():
            if spec is None:
                components[name] = None
            else:
                source, subfolder, _, _ = self._location(name)
                components[name] = f"{spec[1]} from {source}" + (f"/{subfolder}" if subfolder else "")
        if finetune.mode == "lora":
            trained = {
                "mode": "lora",
                "rank": finetune.rank,
                "alpha": finetune.alpha or finetune.rank,
                "target_modules": list(finetune.target_modules),
                "init": finetune.init,
            }
            reference = "the student's denoiser with its LoRA adapters disabled (one copy of the weights)"
        else:
            trained = {"mode": "full", "module": self.denoiser_name}
            reference = "a frozen copy of the pretrained denoiser"
        return {
            "family": self.name,
            "pipeline": self.pipeline_class,
            "pretrained": cfg.pretrained,
            "revision": cfg.revision,
            "variant": cfg.variant,
            "components": components,
            "dtypes": {
                "denoiser": cfg.denoiser_dtype
                + (" (float32: trained)" if cfg.denoiser_dtype == "auto" and finetune.mode == "full" else ""),
                "text_encoder": cfg.text_encoder_dtype,
                "vae": None if self._pixel_space() else cfg.vae_dtype,
            },
            "trained": trained,
            "reference": reference,
            "data": "pixels in [-1, 1]" if self._pixel_space() else "VAE latents (- shift_factor) x scaling_factor",
            "forward_process": self._describe_process(),
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "attention": cfg.attention,
            "sampling": {
                "sampler": cfg.sampler or "the model's scheduler",
                "num_inference_steps": cfg.num_inference_steps,
                "guidance_scale": cfg.guidance_scale,
                "resolution": cfg.resolution or "native",
            },
        }
