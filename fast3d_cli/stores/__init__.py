"""Chunked zarr stores of attention maps: the artifact every stage reads and writes."""

from fast3d_cli.stores.chunks import fill_missing_chunks
from fast3d_cli.stores.location import StoreLocation
from fast3d_cli.stores.lock import writer_lock
from fast3d_cli.stores.store import (
    KINDS,
    SCHEMA_VERSION,
    MapGroup,
    MapStore,
    StoreError,
    create_store,
    open_store,
)

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "MapGroup",
    "MapStore",
    "StoreError",
    "StoreLocation",
    "create_store",
    "fill_missing_chunks",
    "open_store",
    "writer_lock",
]
