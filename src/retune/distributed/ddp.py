"""Multi-process training with PyTorch DDP: ``torchrun --nproc_per_node N -m retune.cli peft run ...``.

``launch`` re-runs the command under torchrun; each process then joins the job through
``retune.training.process_group.Group`` (sharded rows, averaged gradients, rank 0 writes the run directory).
"""

from __future__ import annotations

import subprocess
import sys


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run ``retune ARGV`` under torchrun with ``nproc`` processes on this machine; returns torchrun's exit code."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "retune.cli",
        *argv,
    ]
    return subprocess.run(command, check=False).returncode


def drop_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (the launcher's own option, not passed to the workers)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept
