"""The global random states a training step depends on (torch CPU and CUDA, NumPy, Python), captured and restored.

A resumed scenario restores the state saved after its last finished task, so what follows (new head rows
drawn from torch's global generator, dropout before a task's own seeding) is the same as in an
uninterrupted run. Saved as safetensors + JSON like every checkpoint: nothing is unpickled.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from retune.errors import StoreError
from retune.io_utils import MAX_JSON_BYTES, atomic_path, read_json, regular_file_size, write_json_atomic

RNG_TENSORS = "rng.safetensors"
RNG_FACTS = "rng.json"


def capture_rng_state() -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, JSON facts) of every global generator's state."""
    numpy_state = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    arrays = {
        "torch": torch.get_rng_state().numpy(),
        "numpy": np.asarray(numpy_state[1], dtype=np.uint32),
        "python": np.asarray(python_internal, dtype=np.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        arrays["cuda"] = torch.stack(torch.cuda.get_rng_state_all()).numpy()
    facts = {
        "numpy": [numpy_state[0], int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        "python": [python_version, python_gauss],
    }
    return arrays, facts


def restore_rng_state(arrays: dict[str, np.ndarray], facts: dict) -> None:
    """Set every global generator back to a ``capture_rng_state`` result."""
    torch.set_rng_state(torch.from_numpy(arrays["torch"].copy()))
    name, position, has_gauss, cached = facts["numpy"]
    np.random.set_state((name, arrays["numpy"], position, has_gauss, cached))
    version, gauss = facts["python"]
    random.setstate((version, tuple(int(v) for v in arrays["python"]), gauss))
    if "cuda" in arrays and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(torch.from_numpy(arrays["cuda"].copy())))


def save_rng_state(folder: str | Path) -> None:
    """Write the current global random states into ``folder`` (atomically)."""
    arrays, facts = capture_rng_state()
    with atomic_path(Path(folder) / RNG_TENSORS) as temp:
        save_file(arrays, str(temp))
    write_json_atomic(Path(folder) / RNG_FACTS, facts)


def load_rng_state(folder: str | Path) -> bool:
    """Restore the random states saved in ``folder``; False when it holds none (saved by an older version)."""
    folder = Path(folder)
    if not (folder / RNG_TENSORS).exists() or not (folder / RNG_FACTS).exists():
        return False
    regular_file_size(folder / RNG_TENSORS, MAX_JSON_BYTES, "random-state file")
    try:
        restore_rng_state(load_file(str(folder / RNG_TENSORS)), read_json(folder / RNG_FACTS))
    except Exception as error:  # a damaged file must not silently give a different run
        raise StoreError(
            f"{folder / RNG_TENSORS}: unreadable random state ({' '.join(str(error).split())[:200]}); "
            f"delete {folder} to retrain that task"
        ) from error
    return True
