"""``retune scenario run --engine ray``: every (method, order) job of a scenario as one Ray task.

Each task runs the same ``run_method`` as the sequential runner, on the one ``PreparedScenario`` (embeddings read
from the store once, put in Ray's object store once), with the driver's torch thread count, so the numbers are
identical to a local run's; the driver summarises and writes ``results.json`` as the local runner does. Tasks
write their per-task state under OUT/work (a shared filesystem on a cluster), so a retried or rerun task resumes
after its last finished task. Ray retries a task whose worker died (``max_retries``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from retune.distributed.cluster import connect
from retune.errors import RetuneError
from retune.scenarios.runner import Job, PreparedScenario, Progress, SweepEngine, run_method
from retune.scenarios.spec import ScenarioConfig

TASK_RETRIES = 2


def _run_job(
    job: Job, prepared: PreparedScenario, config: ScenarioConfig, work_dir: Path, threads: int
) -> list[np.ndarray]:
    """Ray task body: one method through one order, with the driver's torch threads (identical numbers)."""
    torch.set_num_threads(threads)
    return run_method(*job, prepared, config, work_dir, lambda message: None)


def ray_sweep(address: str | None = None, threads: int | None = None) -> SweepEngine:
    """A sweep engine running each job as a Ray task (on ``address``, else a local instance); ``threads``: torch
    threads per task (default: the driver's, which keeps results identical to a sequential run's)."""

    def engine(
        jobs: list[Job], prepared: PreparedScenario, config: ScenarioConfig, work_dir: Path, progress: Progress
    ) -> Iterator[tuple[Job, list[np.ndarray]]]:
        ray = connect(address)
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_run_job)
        shared = ray.put(prepared)
        pending = {task.remote(job, shared, config, work_dir, threads or torch.get_num_threads()): job for job in jobs}
        progress(f"{len(jobs)} jobs submitted to Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                scores = ray.get(done[0])
            except ray.exceptions.RayTaskError as error:  # a bad input stays one line, as in a local run
                if isinstance(error.cause, RetuneError):
                    raise error.cause from None
                raise
            yield job, scores
            progress(f"{job[0]} order {job[1]} done on Ray ({len(pending)} jobs left)")

    return engine
