"""`retune ui`: the URL is printed once the MLflow UI answers, and stopping retune stops the UI's processes."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.slow  # seconds of training: make test and CI run it, make test-fast does not
def test_ui_announces_a_live_url_and_its_children_stop_with_it(strict_run):
    import retune

    port = free_port()
    source = str(Path(retune.__file__).resolve().parents[1])  # the retune under test, not always this checkout's
    environment = {**os.environ, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "retune.cli", "ui", str(strict_run["run"]), "--port", str(port)]
    # its own session: if the test fails with the UI's children still up, the finally below stops them too
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        said = ""
        deadline = time.monotonic() + 120
        while "Ctrl-C stops it" not in said and time.monotonic() < deadline:
            if not select.select([process.stderr], [], [], 1.0)[0]:
                continue  # nothing said yet: never block past the deadline
            line = process.stderr.readline()
            assert line or process.poll() is None, "retune ui exited before announcing the UI"
            said += line
        assert f"http://127.0.0.1:{port}" in said and answers(port)  # announced only once it answers
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while answers(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not answers(port), "the MLflow UI still serves after retune ui stopped"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the session retune ui started in, children left behind included
        except ProcessLookupError:
            pass  # every process of the session has ended
        process.wait()
