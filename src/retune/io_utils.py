"""Atomic file writes (a temp file in the same folder, fsync, then a rename over the target), and reads that fail in
one line naming the file: every file retune reads is first checked to be a readable regular file within a size limit,
so a FIFO never blocks a read and ``/dev/zero`` never fills memory."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from retune.errors import DataError


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".tmp-{target.name}-", dir=target.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def removed_on_failure(folder: str | os.PathLike) -> Iterator[None]:
    """Run a command that writes into ``folder``; when it fails and ``folder`` is new and holds no file, remove it,
    so a failed start leaves nothing behind (a folder with results in it is always kept)."""
    folder = Path(folder)
    is_new = not folder.exists()
    try:
        yield
    except BaseException:
        if is_new and folder.is_dir() and not any(path.is_file() for path in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def write_json_atomic(target: str | os.PathLike, payload: object) -> None:
    """Write JSON (indented, keys sorted) so readers never see a half-written file."""
    with atomic_path(target) as temp:
        temp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write text so readers never see a half-written file."""
    with atomic_path(target) as temp:
        temp.write_text(text)


MAX_JSON_BYTES = 1 << 28  # run facts, metrics, digests of every training image: far below this
MAX_TEXT_BYTES = 1 << 24  # YAML configs and prompt files
MAX_TABLE_BYTES = 1 << 32  # label CSVs and metadata tables
MAX_TENSOR_BYTES = 1 << 34  # checkpoints and saved score arrays


def regular_file_size(path: str | os.PathLike, max_bytes: int, kind: str = "file") -> int:
    """The size of a non-empty, readable regular file of at most ``max_bytes``; anything else (a directory, a FIFO,
    ``/dev/zero``, a missing or unreadable file) is a DataError naming ``path``: no read can block or run forever."""
    try:
        info = os.stat(path)
    except ValueError:  # os.stat refuses a path holding a NUL byte
        shown = str(path).replace("\0", "\\0")
        raise DataError(f"{shown}: cannot read file (the path holds a NUL byte)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (device, FIFO or socket)"
        raise DataError(f"{path}: {what}; only regular {kind}s are read")
    if info.st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if info.st_size > max_bytes:
        raise DataError(f"{path}: file of {info.st_size} bytes is over the size limit of {max_bytes} bytes")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read file (permission denied)")
    return info.st_size


def read_text_checked(path: str | os.PathLike, max_bytes: int = MAX_TEXT_BYTES, kind: str = "file") -> str:
    """A text file's content after ``regular_file_size``; undecodable text is a DataError naming the file."""
    regular_file_size(path, max_bytes, kind)
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read ({error})") from None


def load_array(path: str | os.PathLike, max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """A saved ``.npy`` array, never pickled objects; a special, truncated or corrupt file is a one-line DataError."""
    regular_file_size(path, max_bytes, "array file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"{path}: truncated or corrupt saved array ({reason})") from None


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> object:
    """Parse a JSON file; a special, oversized, unreadable, invalid or absurdly nested file is a DataError naming it
    (and the line), not a traceback."""
    path = Path(path)
    text = read_text_checked(path, max_bytes, "JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be a retune file") from None
