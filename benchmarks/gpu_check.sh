#!/usr/bin/env bash
# GPU readiness for issue 16 in one command (< 8 minutes on one GPU): embedding throughput vs the encoder's forward
# limit (AMP + channels_last), a 224k-row adaptor epoch with its host syncs, PEFT LoRA peak max_memory_allocated,
# and the embedding / training-precision equality checks, all on CUDA. Exits non-zero on any failed check or CUDA
# error. Usage (from anywhere): benchmarks/gpu_check.sh   [PYTHON=/path/to/python]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec timeout --signal=INT 480 "$PYTHON" -m benchmarks.gpu_check "$@"
