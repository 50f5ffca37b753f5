"""Where a store lives: a local path, a ``file://`` URL (the same store as its path), or an fsspec URL.

Stores are opened through zarr 3's store layer: a local path or ``file://`` URL is a
:class:`zarr.storage.LocalStore`, any other URL (``memory://``, ``s3://``, ``gs://``, ``az://`` ...) a
:class:`zarr.storage.FsspecStore`. Every check a URL allows without network access is done when it is
parsed: the scheme must be one fsspec knows, and its backend package must be installed (the error names the
package, and the fast3d extra that installs it). Access errors (an unreachable bucket, missing credentials)
become a :class:`StoreError` naming the store when the store is first read.

``memory://`` stores live in the process that writes them (fsspec's in-memory file system): for tests and
for chaining library calls in one process.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from fast3d_cli.errors import UserError

T = TypeVar("T")

# scheme -> (the fsspec backend package, the fast3d extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StoreError(UserError):
    """A store that cannot be used as asked (wrong kind, other model, corrupt, missing group...)."""


def _reason(err: BaseException) -> str:
    """A short one-line description of ``err`` for an error message."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check_backend(scheme: str, text: str) -> None:
    """Refuse a scheme fsspec does not know, or whose backend package is not installed."""
    import fsspec

    if scheme not in fsspec.available_protocols():
        raise StoreError(
            f"unknown URL scheme {scheme!r} in {text}: give a local path, a file:// or memory:// URL, or an "
            "fsspec URL such as s3://bucket/maps.zarr or gs://bucket/maps.zarr"
        )
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as err:
        package, extra = BACKENDS.get(scheme, (None, None))
        if package is not None:
            how = f"the {package} package: pip install 'fast3d[{extra}]' (or pip install {package})"
        else:
            how = f"its fsspec backend ({_reason(err)})"
        raise StoreError(f"{scheme}:// stores need {how}") from None


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store argument. ``text`` is what the user gave (messages, stdout); ``local`` the directory of
    a local store (a path or a ``file://`` URL); ``url`` the fsspec URL of any other store."""

    text: str
    local: Path | None = None
    url: str | None = None

    @classmethod
    def parse(cls, value: str | Path | StoreLocation) -> StoreLocation:
        if isinstance(value, StoreLocation):
            return value
        if isinstance(value, Path):
            return cls(str(value), local=value)
        text = str(value)
        match = _SCHEME.match(text)
        if match is None:
            path = Path(text)
            return cls(str(path), local=path)
        scheme = match.group(1).lower()
        if scheme in ("file", "local"):
            parsed = urlparse(text)
            if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
                raise StoreError(f"{text}: a file:// URL needs an absolute path (file:///abs/path/maps.zarr)")
            return cls(text, local=Path(unquote(parsed.path)))
        _check_backend(scheme, text)
        return cls(text, url=text.rstrip("/"))

    def __str__(self) -> str:
        return self.text

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def name(self) -> str:
        """The last component, as :attr:`pathlib.Path.name` (``maps.zarr`` of ``s3://bucket/maps.zarr``)."""
        return self.local.name if self.local is not None else str(self.url).rsplit("/", 1)[-1]

    def resolved(self) -> str:
        """The store's identity in provenance: the absolute directory of a local store, else its URL."""
        return str(self.local.resolve()) if self.local is not None else str(self.url)

    def describe(self, key: str = "") -> str:
        """Where ``key`` (a path inside the store) is, for a message: a file path or a URL."""
        if self.local is not None:
            return str(self.local / key) if key else str(self.local)
        return f"{self.url}/{key}" if key else str(self.url)

    def zarr_store(self, read_only: bool) -> Any:
        """The zarr store object (one per opened :class:`~fast3d_cli.stores.MapStore`)."""
        from zarr.storage import FsspecStore, LocalStore

        if self.local is not None:
            return LocalStore(self.local, read_only=read_only)
        return self.access(lambda: FsspecStore.from_url(self.url, read_only=read_only))

    def access(self, call: Callable[[], T]) -> T:
        """Run ``call``; on a URL store, an error of the backend (network, credentials, permissions, a missing
        bucket) becomes a :class:`StoreError` naming the store."""
        if self.local is not None:
            return call()
        with self.reaching():
            return call()

    @contextlib.contextmanager
    def reaching(self) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except Exception as err:  # every backend raises its own types (botocore, aiohttp, google-auth...)
            raise StoreError(f"cannot access the store {self.text}: {_reason(err)}") from None

    def run(self, store: Any, coroutine: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        """Run an async operation of zarr's store API on ``store`` (synchronously, on zarr's event loop)."""
        from zarr.core.sync import sync

        return self.access(lambda: sync(coroutine(store)))

    # -- the store as a whole ------------------------------------------------------------------------------

    def exists(self) -> bool:
        """A directory or file at a local location; any object under a URL's prefix."""
        if self.local is not None:
            return self.local.exists()
        return bool(self.list_keys(limit=1))

    def is_empty_or_absent(self) -> bool:
        if self.local is not None:
            return not self.local.exists() or (self.local.is_dir() and not any(self.local.iterdir()))
        return not self.list_keys(limit=1)

    def list_keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """The keys under ``prefix`` (all of them, or the first ``limit``)."""

        async def collect(store: Any) -> list[str]:
            keys: list[str] = []
            async for key in store.list_prefix(prefix):
                keys.append(key)
                if limit is not None and len(keys) >= limit:
                    break
            return keys

        return self.run(self.zarr_store(read_only=True), collect)

    def clear(self) -> None:
        """Delete what the store holds (a local directory itself is kept: the writer lock is on it)."""
        if self.local is not None:
            import shutil

            for child in self.local.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            return
        self.run(self.zarr_store(read_only=False), lambda store: store.clear())
