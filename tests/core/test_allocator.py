"""glibc keeps freed activations for reuse once embedding on CPU starts (checked in a fresh process)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import ctypes, numpy as np
from retune.devices import keep_freed_memory_for_reuse

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mapped_while_alive(n_bytes):
    block = np.ones(n_bytes, dtype=np.uint8)
    mapped = libc.mallinfo2().hblkhd
    del block
    return mapped

before = libc.mallinfo2().hblkhd
print(mapped_while_alive(8 << 20) - before >= 8 << 20, keep_freed_memory_for_reuse(),
      mapped_while_alive(8 << 20) - before >= 8 << 20, mapped_while_alive(64 << 20) - before >= 64 << 20)
"""


LIBC, LIBC_VERSION = platform.libc_ver()


@pytest.mark.skipif(LIBC != "glibc", reason="the allocator setting exists only with glibc")
@pytest.mark.skipif(
    LIBC == "glibc" and tuple(map(int, LIBC_VERSION.split(".")[:2])) < (2, 33), reason="mallinfo2 needs glibc 2.33+"
)
def test_blocks_up_to_32_mib_come_from_the_heap_after_the_setting():
    """Before: an 8 MiB block is mapped on its own (page-faulted in at every use); after: it comes from the heap,
    while a 64 MiB block is still mapped."""
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True", "False", "True"]
