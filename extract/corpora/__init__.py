"""Corpus inputs: every kind a user keeps (a directory, a fairseq TSV, a Kaldi data dir, a lhotse manifest)
becomes one list of entries, before any audio header is read.

Adding an input kind is one module with `accepts(corpus)` and `read(corpus)`, listed in READERS.
Entries say *what* to extract (an id, a file, a time window, a channel); extract.corpus reads the
headers and resolves the windows to samples.
"""

from __future__ import annotations

import os

from extract.corpora.entries import MAX_SECONDS, NUL_PATH, BadFile, Entry, absolute, bad_times, duplicates, to_samples
from extract.errors import ExtractError

__all__ = ["MAX_SECONDS", "BadFile", "Entry", "absolute", "bad_times", "duplicates", "read_corpus", "to_samples"]


def read_corpus(corpus: str) -> tuple[str, list[Entry], list[BadFile]]:
    """(root, entries, bad entries) of any supported corpus input; root is what ids are relative to."""
    from extract.corpora import directory, kaldi, lhotse_manifest, tsv

    if not os.path.exists(corpus):
        raise ExtractError(f"--corpus {corpus}: no such directory or manifest")
    for reader in (kaldi, lhotse_manifest, directory, tsv):
        if reader.accepts(corpus):
            root, entries, bad = reader.read(corpus)
            nul = [e for e in entries if "\x00" in e.path]  # a Kaldi or lhotse path no file system can hold: a bad entry
            entries = [e for e in entries if "\x00" not in e.path]
            bad = bad + [BadFile(e.where, NUL_PATH, e.uid) for e in nul]
            entries, dup = duplicates(entries)
            return root, entries, bad + dup
    raise ExtractError(f"--corpus {corpus}: not a directory, TSV, Kaldi data dir or lhotse manifest")
