"""The server's typed settings (pydantic): address, token, upload limit, batching and explanation grid."""

from __future__ import annotations

import ipaddress

from pydantic import Field, model_validator

from retune.config import StrictModel
from retune.errors import ConfigError

LOOPBACK_NAMES = {"localhost"}


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeConfig(StrictModel):
    """How ``retune serve`` listens and batches; binding beyond loopback requires a token."""

    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback requires a token.")
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = Field(None, min_length=16, description="Bearer token required on every API call and page.")
    max_upload_mb: float = Field(64.0, gt=0, description="Largest request body accepted (413 above).")
    batch_window_ms: float = Field(
        5.0, ge=0, description="How long the first queued image waits for others to share its encoder batch."
    )
    max_batch: int = Field(32, ge=1, description="Most images in one encoder batch (1 = no batching).")
    max_queue: int = Field(512, ge=1, description="Most images waiting for the encoder; more are answered 503.")
    occlusion_grid: int = Field(
        8, ge=2, le=16, description="Occlusion map resolution: grid x grid covered patches per image."
    )
    device: str | None = Field(None, description="Torch device for the encoders (default: CUDA when present).")
    max_request_pixels: int = Field(
        1 << 26, ge=1, description="Most decoded pixels (width x height, summed over its images) one request may ask "
        "for (413 above); the default holds two of the largest single images."
    )
    max_pixels_in_flight: int = Field(
        1 << 28, ge=1, description="Most decoded pixels of all requests being decoded or scored at once (503 above)."
    )
    header_timeout_s: float = Field(10.0, gt=0, description="A request's headers must arrive within this time.")
    body_timeout_s: float = Field(30.0, gt=0, description="A request body may pause at most this long.")
    keep_alive_s: int = Field(5, ge=1, description="An idle kept-alive connection is closed after this time.")
    max_requests: int = Field(
        256, ge=1, description="Requests answered at once (their headers received); more are answered 503 at once. "
        "Connections still sending headers do not count: the header deadline and the open-files limit bound them."
    )

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ServeConfig:
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"binding to {self.host} exposes patient images to the network: "
                "pass --token (16+ characters) or bind 127.0.0.1"
            )
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
