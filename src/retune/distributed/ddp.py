"""Multi-process training with PyTorch DDP: ``torchrun --nproc_per_node N -m retune.cli peft run ...``.

``launch`` runs the command under torchrun's launcher; each process then joins the job through
``retune.training.process_group.Group`` (sharded rows, averaged gradients, rank 0 writes the run directory).
"""

from __future__ import annotations

import logging

from retune.errors import RetuneError
from retune.verbosity import third_party_output_shown


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``retune ARGV`` in ``nproc`` processes on this machine with torchrun's launcher (in this process);
    returns 0, or 128 + the signal that stopped the job (Ctrl-C: 130).

    Each process prints its own output and errors. torchrun's banner (OMP_NUM_THREADS), its agent's logs and its
    report of a failed process are shown with ``retune --verbose`` only; by default a failed process is one
    RetuneError line naming its rank and exit code.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "retune.cli", *argv])
    shown = third_party_output_shown()
    if not shown:
        logging.disable(logging.CRITICAL)  # this process only launches and waits: every record here is torchrun's
    try:
        run(args)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        detail = f"\n{error}" if shown else ""
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        raise RetuneError(f"process {rank} of {nproc} failed ({how}); its own output above says why{detail}") from None
    except SignalException as error:
        return 128 + int(error.sigval)
    finally:
        logging.disable(logging.NOTSET)
    return 0


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
