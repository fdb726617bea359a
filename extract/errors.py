"""Extraction errors a user reads: UserErrors (store.oneline), so every CLI prints them as one line."""

from store.oneline import UserError


class ExtractError(UserError):
    """Bad corpus, bad teacher or bad option; the message names it and says the fix."""
