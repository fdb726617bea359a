"""Extraction errors a user reads: subclasses of the store's CacheError so every CLI prints one line."""

from store.errors import CacheError


class ExtractError(CacheError):
    """Bad corpus, bad teacher or bad option; the message names it and says the fix."""
