"""Peak memory of a Pick-a-Pic import (`prefopt pairs build`) at two dataset sizes.

The pair source streams its rows and the builder holds one shard of them at a
time, so the peak resident memory of the build should not grow with the number
of rows. This script writes a synthetic Pick-a-Pic parquet file per size (two
PNG images of noise per row), runs `prefopt pairs build` on each in a fresh
process, interleaving the sizes, and prints the median peak RSS of each size.

    python docs/scripts/bench/pickapic_import_memory.py --pretrained DIR [--sizes 2000 20000] [--repeats 2]

DIR is an SD pipeline directory (a tiny one from tests/tiny_models.py works:
the images are encoded at --resolution by its VAE).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml


def write_parquet(path: Path, rows: int, image_side: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)

    def png() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    schema = pa.schema([("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", pa.float64()),
                        ("caption", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 256):
            n = min(256, rows - start)
            writer.write_table(pa.table({
                "jpg_0": [png() for _ in range(n)], "jpg_1": [png() for _ in range(n)],
                "label_0": [float(rng.integers(0, 2)) for _ in range(n)],
                "caption": [f"caption {start + i}" for i in range(n)],
            }, schema=schema))


def peak_rss_mib(recipe: Path) -> float:
    """Run `prefopt pairs build RECIPE` in a new process; its peak resident memory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFOPT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "prefopt.cli", "pairs", "build", str(recipe)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pairs build failed:\n{stderr[-2000:]}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--image-side", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pickapic-bench-") as tmp:
        base = Path(tmp)
        recipes = {}
        for size in args.sizes:
            data = base / f"pickapic-{size}.parquet"
            write_parquet(data, size, args.image_side)
            recipe = {
                "seed": 0, "output_dir": str(base / f"run-{size}"),
                "backbone": {"name": "sd", "pretrained": args.pretrained, "resolution": args.resolution,
                             "finetune": {"mode": "lora"}},
                "pairs": {"source": {"name": "pickapic", "path": str(data)}},
                "objective": {"name": "diffusion_dpo"},
                "train": {"max_steps": 1},
            }
            recipes[size] = base / f"recipe-{size}.yaml"
            recipes[size].write_text(yaml.safe_dump(recipe))
            print(f"{size} rows: {data.stat().st_size / 2**20:.0f} MiB of parquet", flush=True)
        peaks: dict[int, list[float]] = {size: [] for size in args.sizes}
        for repeat in range(args.repeats):  # interleaved: machine load drifts over time
            for size in args.sizes:
                import shutil

                shutil.rmtree(base / f"run-{size}", ignore_errors=True)
                peaks[size].append(peak_rss_mib(recipes[size]))
                print(f"repeat {repeat}: {size} rows -> peak RSS {peaks[size][-1]:.0f} MiB", flush=True)
        for size in args.sizes:
            print(f"{size} rows: median peak RSS {statistics.median(peaks[size]):.0f} MiB ({peaks[size]})")
        small, large = min(args.sizes), max(args.sizes)
        print(f"ratio {large}/{small}: {statistics.median(peaks[large]) / statistics.median(peaks[small]):.3f}")


if __name__ == "__main__":
    main()
