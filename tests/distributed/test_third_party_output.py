"""torchrun's and Ray's own banners and logs are hidden unless ``retune --verbose`` (RETUNE_VERBOSE=1); a failed
DDP process is one line, and the processes' own errors stay theirs to print. No real torchrun job or Ray cluster."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch.distributed.run
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from retune.distributed import cluster, ddp
from retune.errors import RetuneError
from retune.verbosity import VERBOSE_ENV

OMP_BANNER = "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default"


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_ray_keeps_worker_output_and_its_info_logs_to_itself_unless_verbose(monkeypatch, verbose):
    calls = []
    fake_ray = SimpleNamespace(is_initialized=lambda: False, init=lambda **options: calls.append(options))
    monkeypatch.setattr(cluster, "require_ray", lambda: fake_ray)
    monkeypatch.setenv(VERBOSE_ENV, verbose)
    cluster.connect(num_cpus=1)
    shown = verbose == "1"
    assert calls[0]["log_to_driver"] is shown  # workers' warnings and "(raylet)" lines
    assert calls[0]["logging_level"] == (logging.INFO if shown else logging.ERROR)  # "Started a local Ray instance"


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_torchrun_banner_is_shown_only_when_verbose(monkeypatch, caplog, capfd, verbose):
    launched = []

    def fake_torchrun(args):
        """What torchrun's launcher does before starting the processes: log its OMP_NUM_THREADS banner."""
        launched.append(args)
        torch.distributed.run.logger.warning(OMP_BANNER)

    monkeypatch.setattr(torch.distributed.run, "run", fake_torchrun)
    monkeypatch.setenv(VERBOSE_ENV, verbose)
    with caplog.at_level(logging.WARNING):
        assert ddp.launch(2, ["peft", "run", "--out", "r"]) == 0
    printed = capfd.readouterr().err + caplog.text
    assert (OMP_BANNER in printed) is (verbose == "1")
    assert launched[0].nproc_per_node == "2" and launched[0].training_script_args == ["peft", "run", "--out", "r"]
    logging.getLogger("retune.test").warning("after the launch")
    assert "after the launch" in caplog.text  # logging works again once the job is over


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_a_failed_process_is_one_line_naming_its_rank_with_torchruns_report_only_when_verbose(monkeypatch, verbose):
    def failing_torchrun(args):
        failure = ProcessFailure(local_rank=1, pid=4242, exitcode=2, error_file="<N/A>")
        raise ChildFailedError("retune.cli", {1: failure})

    monkeypatch.setattr(torch.distributed.run, "run", failing_torchrun)
    monkeypatch.setenv(VERBOSE_ENV, verbose)
    with pytest.raises(RetuneError, match=r"process 1 of 2 failed \(exit code 2\)") as raised:
        ddp.launch(2, ["peft", "run"])
    assert ("Root Cause" in str(raised.value)) is (verbose == "1")


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_ray_data_output_is_quieted_during_an_embedding_job_and_every_setting_restored_after(monkeypatch, verbose):
    from retune.distributed.ray_embed import ray_data_quieted

    monkeypatch.setenv(VERBOSE_ENV, verbose)
    context = SimpleNamespace(enable_progress_bars=True, print_on_execution_start=True)
    console = logging.StreamHandler()
    console.name, console.level = "console", logging.INFO
    logger = logging.getLogger("ray.data")
    logger.addHandler(console)
    try:
        with ray_data_quieted(context):
            during = (context.enable_progress_bars, context.print_on_execution_start, console.level)
        after = (context.enable_progress_bars, context.print_on_execution_start, console.level)
    finally:
        logger.removeHandler(console)
    shown = verbose == "1"
    assert during == (False, shown, logging.INFO if shown else logging.ERROR)
    assert after == (True, True, logging.INFO)
