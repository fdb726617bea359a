"""One small hierarchy so callers catch CacheError and the CLI prints one line, not a traceback."""

from __future__ import annotations

from store.oneline import UserError


class CacheError(UserError):
    """Base of every error the store raises about a cache, for a user to read."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """No cache at that path / fingerprint."""


class NotACacheError(CacheError):
    """The path exists but holds something else."""


class FormatVersionError(CacheError):
    """The cache was written by a newer distilcache."""


class SpecMismatchError(CacheError):
    """A cache exists but was produced by something other than what was asked for."""


class MissingDataError(CacheError, KeyError):
    """A layer, utterance or frame range that the cache does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CorruptDataError(CacheError):
    """A checksum or the index says the bytes on disk are damaged."""


class WriteError(CacheError, OSError):
    """A part could not be written (disk full, permissions); the cache is as it was before that part."""


class StatsError(CacheError):
    """Fitted statistics (int8/int4/pq) that would code every row wrongly: non-finite, or no utterance to fit on."""


class StorageRangeError(CacheError):
    """Values the cache's storage dtype cannot hold (NaN, inf, or beyond float16's range)."""
