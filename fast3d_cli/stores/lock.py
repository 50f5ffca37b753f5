"""One writer per store: the stage that creates or fills a store holds an exclusive lock on its directory.

Two ``extract`` (or ``predict``) commands started together on one new store both found no store, and the
second to create it failed with "already exists". The store directory is created atomically (``mkdir``)
and ``flock``-ed by the writer for the whole stage; another writer is refused while it runs, saying so.
Readers do not lock. Under ``accelerate launch`` only the coordinating process (rank 0) takes the lock.
``fast3d eval`` locks its evaluation directories the same way (`directory_lock`).

Object stores (``s3://``, ``gs://`` ...) have no such lock: two writers of one store URL are not detected
there (the README says what this means).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from fast3d_cli.errors import UserError
from fast3d_cli.stores.location import StoreError, StoreLocation


@contextlib.contextmanager
def writer_lock(location: StoreLocation | Path | str) -> Iterator[None]:
    """Hold the exclusive writer lock of the local store at ``location`` (its directory is created if
    missing; an empty directory this call created is removed again when the stage fails before writing
    anything). A URL store is not locked."""
    location = StoreLocation.parse(location)
    if location.local is None:
        yield
        return
    path = location.local
    busy = (
        f"another process is writing {path} (a fast3d stage started on the same output); wait for it to "
        "finish, then rerun this command to reuse or complete the store"
    )
    not_dir = f"{path} exists and is not a fast3d store; choose another output path"
    with directory_lock(path, busy, not_dir, error=StoreError):
        yield


@contextlib.contextmanager
def directory_lock(
    path: Path,
    busy: str,
    not_dir: str,
    *,
    wait: Callable[[], None] | None = None,
    error: type[UserError] = UserError,
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory ``path`` (created if missing; removed again if this call
    created it and it is still empty when the body fails). Held by another process: ``error(busy)``, or,
    with ``wait``, call ``wait()`` once and block until it is free. ``error(not_dir)`` when ``path`` is a
    file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = False
    with contextlib.suppress(FileExistsError):
        path.mkdir()
        created = True
    if not path.is_dir():
        raise error(not_dir)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait is None:
                raise error(busy) from None
            wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only while still empty
            raise
    finally:
        os.close(fd)
