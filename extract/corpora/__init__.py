"""Corpus inputs: every kind a user keeps (a directory, a fairseq TSV, a Kaldi data dir, a lhotse manifest)
becomes one list of entries, before any audio header is read.

Adding an input kind is one module with `accepts(corpus)` and `read(corpus)`, listed in READERS.
Entries say *what* to extract (an id, a file, a time window, a channel); extract.corpus reads the
headers and resolves the windows to samples.
"""

from __future__ import annotations

import fnmatch
import os

from extract.corpora.entries import MAX_SECONDS, NUL_PATH, BadFile, Entry, absolute, bad_times, duplicates, to_samples
from extract.errors import ExtractError

__all__ = ["MAX_SECONDS", "BadFile", "Entry", "absolute", "bad_times", "corpus_identity", "duplicates", "evaluation_folders",
           "included", "note_held_out_folders", "read_corpus", "to_samples"]


def read_corpus(corpus: str, include: tuple[str, ...] = ()) -> tuple[str, list[Entry], list[BadFile]]:
    """(root, entries, bad entries) of any supported corpus input; root is what ids are relative to. `include`
    (--include globs) keeps only the entries whose id, or a folder of it, matches one of them."""
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
            if include:
                entries, bad = taken(entries, bad + dup, include, corpus)
                return root, entries, bad
            return root, entries, bad + dup
    raise ExtractError(f"--corpus {corpus}: not a directory, TSV, Kaldi data dir or lhotse manifest")


def included(uid: str, include: tuple[str, ...]) -> bool:
    """Whether an id (a path under the corpus without extension, or a manifest's id) or one of its folders matches a
    glob: 'train-*' takes train-clean-100/103/1240/103-1240-0000 by its first folder."""
    parts = uid.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, glob) for glob in include for p in prefixes)


def taken(entries: list[Entry], bad: list[BadFile], include: tuple[str, ...], corpus: str) -> tuple[list[Entry], list[BadFile]]:
    """The entries (and bad entries) --include takes; one line when it takes none."""
    kept = [e for e in entries if included(e.uid, include)]
    if entries and not kept:
        raise ExtractError(f"--include {' --include '.join(include)}: matches none of the {len(entries)} utterances of --corpus "
                           f"{corpus}; a glob matches an id (its path under the corpus, no extension) or one of its folders, "
                           "e.g. --include 'train-*'")
    return kept, [b for b in bad if b.uid is None or included(b.uid, include)]


def evaluation_folders(ids) -> list[str]:
    """The top folders of these ids named like held-out sets (dev*, test*, eval*, valid*): LibriSpeech unpacks
    train-*, dev-* and test-* side by side, and a corpus of all three would train on its own test sets."""
    tops = {uid.split("/", 1)[0] for uid in ids if "/" in uid}
    return sorted(t for t in tops if t.lower().startswith(("dev", "test", "eval", "valid")))


def note_held_out_folders(corpus: str, ids: list[str]) -> None:
    """One line when a corpus extracted whole holds folders named like held-out sets: a cache of it trains on them."""
    import sys

    named = evaluation_folders(ids)
    if named:
        print(f"note: --corpus {corpus} holds {', '.join(f + '/' for f in named)} (held-out sets, by their names): they are "
              "cached with the rest, and train-student on this corpus trains on them; --include 'train-*' takes only the "
              "training folders", file=sys.stderr)


def corpus_identity(corpus: str, include: tuple[str, ...] = ()) -> str:
    """What a part records as its corpus: the --corpus input itself (directory or manifest), resolved, so that a dev set,
    a Kaldi segment list or lhotse cuts of the same files are told apart from the training corpus; with --include, the
    globs too (LibriSpeech's train-* folders are another corpus than the whole root)."""
    path = os.path.realpath(corpus)
    return f"{path} [include {','.join(include)}]" if include else path
