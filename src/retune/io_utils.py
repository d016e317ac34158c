"""Atomic file writes (a temp file in the same folder, fsync, then a rename over the target) and JSON reads that
fail in one line naming the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def write_json_atomic(target: str | os.PathLike, payload: object) -> None:
    """Write JSON (indented, keys sorted) so readers never see a half-written file."""
    with atomic_path(target) as temp:
        temp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write text so readers never see a half-written file."""
    with atomic_path(target) as temp:
        temp.write_text(text)


def read_json(path: str | os.PathLike) -> object:
    """Parse a JSON file; an unreadable or invalid file is a DataError naming it (and the line), not a traceback."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read ({error})") from None
