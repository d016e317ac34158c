"""Multipart uploads read into memory only (never spooled to disk), within a size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from retune.errors import DataError

UPLOAD_FIELD = "images"
MAX_FILES = 64


class UploadTooLarge(Exception):
    """The request body is larger than the configured limit."""


class NotMultipart(Exception):
    """The request is not multipart/form-data."""


class ClientGone(Exception):
    """The client closed the connection before its request body arrived (logged in one line, nothing to answer)."""


@dataclass
class Upload:
    """One uploaded file: the name the client gave (shown escaped, never used as a path) and its bytes."""

    name: str
    data: bytes


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with a spool size above the body limit: no part ever rolls over to a temp file."""

    def __init__(self, request: Request, stream: AsyncIterator[bytes], limit: int) -> None:
        super().__init__(request.headers, stream, max_files=MAX_FILES, max_fields=MAX_FILES)
        self.spool_max_size = limit + 1


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, refused as soon as it passes ``limit`` bytes (a lying Content-Length cannot get round it)."""
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise UploadTooLarge(f"upload larger than the limit of {limit / 2**20:g} MiB")
            yield chunk
    except ClientDisconnect:
        raise ClientGone(f"client disconnected after {received:,} bytes of {request.url.path}") from None


async def read_body(request: Request, limit: int) -> bytes:
    """A small request body (a form), refused above ``limit`` bytes instead of read whole into memory."""
    return b"".join([chunk async for chunk in _limited(request, limit)])


async def read_uploads(request: Request, limit: int) -> list[Upload]:
    """The files of the ``images`` field (one or more), in memory; errors name the problem."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise NotMultipart(
            f"expected a multipart/form-data upload with one or more files in the '{UPLOAD_FIELD}' field, "
            f"got content type '{content_type or 'none'}'"
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(
            f"upload of {int(declared) / 2**20:.1f} MiB is larger than the limit of {limit / 2**20:g} MiB"
        )
    try:
        form = await _InMemoryParser(request, _limited(request, limit), limit).parse()
    except MultiPartException as error:
        raise DataError(f"malformed multipart body ({error.message})") from error
    try:
        files = [item for item in form.getlist(UPLOAD_FIELD) if isinstance(item, UploadFile)]
        if not files:
            other = sorted(set(form.keys()) - {UPLOAD_FIELD})
            hint = f" (fields sent: {', '.join(other)})" if other else ""
            raise DataError(f"no image in the request: send one or more files in the '{UPLOAD_FIELD}' field{hint}")
        return [Upload(item.filename or f"image {index + 1}", await item.read()) for index, item in enumerate(files)]
    finally:
        await form.close()
