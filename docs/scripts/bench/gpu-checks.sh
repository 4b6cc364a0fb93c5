#!/usr/bin/env bash
# The checks that need CUDA: FSDP / DeepSpeed launches (tests/test_sharded.py, marked gpu)
# and TF32. Run from the repository root on a GPU machine with prefopt installed:
#   pip install -e ".[dev,deepspeed]" && docs/scripts/bench/gpu-checks.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
python - <<'PY'
import torch
from prefopt.accelerate_setup import set_tf32
assert torch.cuda.is_available(), "no CUDA device"
set_tf32(True)
assert torch.backends.cuda.matmul.fp32_precision == "tf32"
set_tf32(False)
assert torch.backends.cuda.matmul.fp32_precision == "ieee"
print("tf32 switch: ok on", torch.cuda.get_device_name(0), "x", torch.cuda.device_count())
PY
python -m pytest -q -m gpu tests/test_sharded.py "$@"
