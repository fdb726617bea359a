"""fairseq's manifest: the root on line 1, then `relative/path<TAB>num_samples` (the count is optional)."""

from __future__ import annotations

import os

from extract.corpora.directory import file_entries
from extract.corpora.entries import NUL_PATH, BadFile, Entry
from extract.errors import ExtractError


def accepts(corpus: str) -> bool:
    return os.path.isfile(corpus)


def relative_paths(corpus: str) -> tuple[str, list[str], list[BadFile]]:
    try:
        with open(corpus, encoding="utf-8") as f:
            lines = [ln.rstrip("\n").rstrip("\r") for ln in f]
    except UnicodeDecodeError as e:
        raise ExtractError(f"--corpus {corpus}: not a text TSV manifest (byte {e.start} is not UTF-8)") from None
    if not lines or not os.path.isdir(lines[0].strip()):
        raise ExtractError(f"--corpus {corpus}: a TSV manifest's first line must be the audio root directory (got {lines[:1]})")
    root = os.path.abspath(lines[0].strip())
    real_root = os.path.realpath(root)
    rels, bad = [], []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if "\x00" in line:  # before realpath, which raises on it: a bad entry, which --on-error skip skips
            bad.append(BadFile(f"{corpus} line {n}", NUL_PATH))
            continue
        cols = line.split("\t")
        if len(cols) > 2 or len(cols) == 2 and not cols[1].strip().isdigit():
            raise ExtractError(f"--corpus {corpus}, line {n}: expected 'path<TAB>num_samples', got {line[:80]!r}")
        rel = cols[0]
        full = os.path.realpath(os.path.join(root, rel))
        if os.path.isabs(rel) or os.path.commonpath([real_root, full]) != real_root:
            raise ExtractError(f"--corpus {corpus}, line {n}: {rel!r} is outside the root {root}; paths must be relative to it")
        rels.append(os.path.normpath(rel))
    return root, rels, bad


def read(corpus: str) -> tuple[str, list[Entry], list[BadFile]]:
    root, rels, bad = relative_paths(corpus)
    return root, file_entries(root, rels), bad
