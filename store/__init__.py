"""distilcache's feature store: cache format, identity, registry and the read API.

Imports numpy, zarr and h5py only (never torch), so any tool can read a cache.
"""

from store.errors import (
    CacheError,
    CacheNotFoundError,
    CorruptDataError,
    FormatVersionError,
    MissingDataError,
    NotACacheError,
    SpecMismatchError,
    WriteError,
)
from store.fs import StoreAccessError
from store.layout import Layout, part_name
from store.reader import Cache, default_cache_dir, open_cache
from store.registry import closest_refusal, describe, find_cache, list_caches, remove_cache
from store.spec import FORMAT_VERSION, TARGETS_VERSION, check_compatible, differences, fingerprint, validate_spec
from store.verify import verify_cache
from store.writer import PartWriter, audio_digest, create_cache

__all__ = [
    "FORMAT_VERSION",
    "TARGETS_VERSION",
    "Cache",
    "CacheError",
    "CacheNotFoundError",
    "CorruptDataError",
    "FormatVersionError",
    "Layout",
    "MissingDataError",
    "NotACacheError",
    "PartWriter",
    "SpecMismatchError",
    "StoreAccessError",
    "WriteError",
    "audio_digest",
    "check_compatible",
    "closest_refusal",
    "create_cache",
    "default_cache_dir",
    "describe",
    "differences",
    "find_cache",
    "fingerprint",
    "list_caches",
    "open_cache",
    "part_name",
    "remove_cache",
    "validate_spec",
    "verify_cache",
]
