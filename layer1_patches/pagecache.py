"""Dropping a file's written pages from this node's page cache, on a thread of its own.

Written patches are read later by another job, usually on another node, so keeping them in this node's page cache
only makes the kernel reclaim memory for them (bench/page_cache.py measured the drop: 4 dense slides 2 at a time
on 2 cores ran 9 % faster; 1 at a time, with the other core idle to do the kernel's work, 3 % slower). The advice
also starts the writeback of the dirty pages inside the call (ext4 allocates blocks and submits the I/O): 0.17 CPU s
per 1.1 GB of patches, which on the writer's own thread delayed the next patch (perf, issue 17). Here it runs
beside the writer.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor


def advise_dontneed(fd: object) -> None:
    # Advice only: a platform or file system (or HDF5 driver: no descriptor) without it loses only the saving.
    if hasattr(os, "posix_fadvise") and isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


class PageCacheDropper:
    """`drop(fd)` advises the kernel to drop the file's cached pages on one background thread, a call at a time
    (a drop asked for while the last still runs waits for it: every request is one call, in order). `close` waits
    for the last call; the file must stay open until then."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None

    def drop(self, fd: object) -> None:
        if self._last is not None:
            self._last.result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="camnet-pagecache")
        self._last = self._pool.submit(advise_dontneed, fd)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool, self._last = None, None
