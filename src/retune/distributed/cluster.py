"""Joining or starting Ray: one place that turns ``--address`` into a connected driver, or one clear line."""

from __future__ import annotations

import logging
import os
import socket
from types import ModuleType

from retune.errors import ConfigError
from retune.verbosity import third_party_output_shown

INSTALL_HINT = "pip install 'retune[ray]'"
REACH_TIMEOUT_S = 5.0


def require_ray() -> ModuleType:
    """The ``ray`` module, or a ConfigError saying how to install the extra."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the Ray engine needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for ``auto`` (Ray finds the local cluster)."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address '{address}': expected auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)


def connect(address: str | None = None, num_cpus: int | None = None) -> ModuleType:
    """Connected ``ray``: the running session if any, else ``address`` (a cluster), else a local instance.

    A local instance gets ``num_cpus`` (default: every core); an address that does not answer within a few
    seconds is one line naming it (Ray itself would retry for minutes). Unless ``retune --verbose``, the workers'
    output (warnings, raylet lines) stays in Ray's log files and the driver's Ray logger says errors only: a failed
    task still raises here.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    target = _host_port(address) if address else None
    if target is not None:
        try:
            socket.create_connection(target, timeout=REACH_TIMEOUT_S).close()
        except OSError as error:
            raise ConfigError(f"Ray cluster at '{address}' cannot be reached ({error.strerror or error})") from None
    shown = third_party_output_shown()
    output = {"log_to_driver": shown, "logging_level": logging.INFO if shown else logging.ERROR}
    try:
        if address:
            ray.init(address=address, **output)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **output)
    except ConnectionError as error:
        raise ConfigError(f"Ray cluster at '{address or 'local'}': {error}") from None
    return ray
