"""A/B of pair-generation variants on one pipeline, interleaved in one process.

    python docs/scripts/bench/generation_cpu.py PIPELINE_DIR [--reps 5] [--pairs 16] [--steps 25] [--eager VARIANT...] [--compile regional whole frozen setting]

Samples one chunk of ``--pairs`` pairs (winner and loser prompt of each row side by side, the same seed,
CFG 7.5, as ``prefopt pairs build`` does with ``pairs.sample_batch_size=--pairs``) through SD's
diffusers pipeline on the reference UNet, in these variants, one after the other in a rotating order:

- ``prompts``: the pipeline called with the prompt strings (it encodes c, c- and the empty negative
  prompt on every call): ``SDBackbone.sample``;
- ``embeds``: the prompts encoded once before, passed as prompt_embeds / negative_prompt_embeds (the
  empty prompt's embedding repeated), so a call runs no text encoder;
- ``inference_mode``: ``prompts`` under torch.inference_mode instead of the pipeline's no_grad;
- ``chunk x2``: two chunks' worth of pairs in one call (images/s per image);
- ``bf16``: ``prompts`` with the engine dtype bfloat16 (what ``train.mixed_precision: bf16`` loads the
  frozen reference in), on CPUs with AMX / AVX512-BF16 kernels;
- ``compiled <kind>`` (with ``--compile KIND...``): ``prompts`` on another copy of the pipeline whose
  reference UNet is compiled with inductor: ``regional`` (train.compile's regional compilation of the
  repeated blocks), ``whole`` (the whole UNet) or ``frozen`` (the whole UNet with inductor's
  ``freezing``: weights folded in as constants and prepacked for the CPU's kernels, valid only while
  they do not change), or ``setting`` (``backbone.compile_sampling: true``, what ``prefopt pairs build``
  runs: the whole UNet behind a compiled wrapper; ``setting bf16`` the same in bfloat16); each one's
  first call, which compiles, is timed on its own.

Prints each variant's median images/s and its ratio to ``prompts``, the machine's load average, and the
largest difference of each variant's latents from ``prompts``'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--eager", nargs="*", default=["embeds", "inference_mode", "chunk x2"],
                        help="eager variants to run besides 'prompts' (default: all)")
    parser.add_argument("--compile", nargs="*", default=[], choices=["regional", "whole", "frozen", "setting", "setting bf16"])
    args = parser.parse_args()

    from prefopt.interfaces import Runtime
    from prefopt_backbones.sd import SDBackbone

    def load(dtype=torch.float32, **settings):
        backbone = SDBackbone(SDBackbone.Config(pretrained=str(args.pipeline), resolution=16,
                                                num_inference_steps=args.steps, **settings))
        backbone.load(Runtime(device=torch.device("cpu"), dtype=dtype, train=False))
        return backbone

    backbone = load()
    lines = (args.pipeline / "prompts.txt").read_text().splitlines()
    # c and c- of each row side by side with the row's seed, as prefopt.data.build samples them.
    prompts, seeds = [], []
    for i in range(2 * args.pairs):
        prompts += [lines[(2 * i) % len(lines)], lines[(2 * i + 1) % len(lines)]]
        seeds += [1000 + i, 1000 + i]
    one = slice(0, 2 * args.pairs)
    pipeline = backbone._sampling_pipeline(backbone._get_reference_module())
    size = backbone._resolution()
    common = dict(num_inference_steps=args.steps, guidance_scale=backbone.config.guidance_scale, height=size,
                  width=size, output_type="latent")

    def generators(rows):
        return [torch.Generator().manual_seed(s) for s in seeds[rows]]

    def with_embeds():
        cond, _ = pipeline.encode_prompt(prompts[one], torch.device("cpu"), 1, False)
        empty, _ = pipeline.encode_prompt([""], torch.device("cpu"), 1, False)
        return pipeline(prompt_embeds=cond, negative_prompt_embeds=empty.expand_as(cond),
                        generator=generators(one), **common).images

    def inference_mode():
        with torch.inference_mode():
            return pipeline(prompt=prompts[one], generator=generators(one), **common).images.clone()

    bf16 = load(torch.bfloat16) if "bf16" in args.eager else None  # the engine dtype train.mixed_precision=bf16 gives
    variants = {
        "prompts": lambda: backbone.sample(prompts[one], seeds[one]),
        "embeds": with_embeds,
        "inference_mode": inference_mode,
        "chunk x2": lambda: backbone.sample(prompts, seeds)[one],
        "bf16": lambda: bf16.sample(prompts[one], seeds[one]),
    }
    variants = {name: fn for name, fn in variants.items() if name == "prompts" or name in args.eager}
    images = {name: 2 * args.pairs for name in variants}
    images["chunk x2"] = 4 * args.pairs
    for kind in args.compile:
        from prefopt.engine.speed import compile_repeated_blocks

        compiled = load(torch.bfloat16 if kind.endswith("bf16") else torch.float32,
                        compile_sampling=kind.startswith("setting"))
        unet = compiled._get_reference_module()
        if kind == "regional":
            compile_repeated_blocks(unet)
        elif not kind.startswith("setting"):
            unet.compile(options={"freezing": kind == "frozen"})
        began = time.perf_counter()
        compiled.sample(prompts[one], seeds[one])
        print(f"compiled {kind}: first call (compiles) {time.perf_counter() - began:.1f} s", flush=True)
        variants[f"compiled {kind}"] = lambda compiled=compiled: compiled.sample(prompts[one], seeds[one])
        images[f"compiled {kind}"] = 2 * args.pairs

    latents = {name: fn() for name, fn in variants.items()}  # warm-up, and each variant's result
    seconds = {name: [] for name in variants}
    names = list(variants)
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            began = time.perf_counter()
            variants[name]()
            seconds[name].append(time.perf_counter() - began)
    base = images["prompts"] / statistics.median(seconds["prompts"])
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}, "
          f"{args.pairs} pairs, {args.steps} steps, {args.reps} reps")
    for name in names:
        rate = images[name] / statistics.median(seconds[name])
        diff = (latents[name] - latents["prompts"]).abs().max().item()
        print(f"{name:15s} {rate:7.2f} images/s  {rate / base:5.3f}x  "
              f"(spread {min(seconds[name]):.2f}-{max(seconds[name]):.2f} s)  max |Δ latents| {diff:.2e}")


if __name__ == "__main__":
    main()
