"""The C heap of this process (glibc only; elsewhere these do nothing).

- :func:`trim_heap` gives freed heap back to the OS: reading 300k vlen strings through HDF5 leaves
  MBs of free but fragmented heap behind that would otherwise stay in the RSS.
- :func:`reuse_freed_memory` makes glibc serve allocations of up to 32 MB from the heap and keep
  freed memory for the next ones, instead of mapping fresh pages for every large array and
  unmapping them when it is freed. A loop that allocates the same large temporaries chunk after
  chunk (``search``: peak lists, dense chunks, score matrices) otherwise pays a page fault per
  4 KB on every chunk: 912k faults and 6.4 s of system time in a 1,000-query search of 1.59M
  entries, 160k faults and 1.3 s with it. For commands that own their process (the CLI), never
  for the library.
"""

from __future__ import annotations

__all__ = ["trim_heap", "reuse_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def _libc():  # type: ignore[no-untyped-def]
    import ctypes

    return ctypes.CDLL("libc.so.6")


def trim_heap() -> None:
    """Give freed heap back to the OS."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reuse_freed_memory(mmap_threshold: int = 32 << 20, keep: int = 512 << 20) -> None:
    """Allocations below ``mmap_threshold`` (at most glibc's 32 MB) from the heap; keep up to
    ``keep`` bytes of freed heap before returning memory to the OS."""
    try:
        libc = _libc()
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, keep)
        libc.mallopt(_M_TOP_PAD, 64 << 20)
    except (OSError, AttributeError):
        pass
