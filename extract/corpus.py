"""What to extract: a corpus (directory or fairseq TSV) as a list of utterances, from headers only.

Like lhotse's manifests, this says *what* (ids, paths, lengths); the store decides where it lives.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import soundfile as sf

from extract.errors import ExtractError

MIN_SAMPLES = 400  # HuBERT/wav2vec2's first conv kernel; overridden from the teacher's config


@dataclass(frozen=True)
class Utterance:
    uid: str  # corpus-relative path without extension, '/' separators
    path: str  # absolute
    samples: int  # in the file, at its own rate (header)
    sample_rate: int
    channels: int

    def samples_at(self, rate: int) -> int:
        return self.samples * rate // self.sample_rate

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def _audio_extensions() -> set[str]:
    return {f".{fmt.lower()}" for fmt in sf.available_formats()} | {".oga", ".opus", ".aif", ".aiff"}


def _walk(root: str) -> list[str]:
    """Regular audio files under root, following symlinks but each real directory once (loops end, no repeats)."""
    exts = _audio_extensions()
    seen: set[tuple[int, int]] = set()
    found = []
    for d, subdirs, files in os.walk(root, followlinks=True):
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen:
            subdirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        subdirs.sort()
        for f in sorted(files):
            path = os.path.join(d, f)
            if os.path.splitext(f)[1].lower() in exts and _regular(path):
                found.append(os.path.relpath(path, root))
    return found


def _regular(path: str) -> bool:
    """Only regular files are audio: a FIFO or device named x.wav would block a reader forever."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # a dangling link: let the header read name it as a missing file


def _read_tsv(corpus: str) -> tuple[str, list[str]]:
    """fairseq's manifest: the root on line 1, then `relative/path<TAB>num_samples` (the count is optional)."""
    try:
        with open(corpus, encoding="utf-8") as f:
            lines = [ln.rstrip("\n").rstrip("\r") for ln in f]
    except UnicodeDecodeError as e:
        raise ExtractError(f"--corpus {corpus}: not a text TSV manifest (byte {e.start} is not UTF-8)") from None
    if not lines or not os.path.isdir(lines[0].strip()):
        raise ExtractError(f"--corpus {corpus}: a TSV manifest's first line must be the audio root directory (got {lines[:1]})")
    root = os.path.abspath(lines[0].strip())
    real_root = os.path.realpath(root)
    rels = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) > 2 or len(cols) == 2 and not cols[1].strip().isdigit():
            raise ExtractError(f"--corpus {corpus}, line {n}: expected 'path<TAB>num_samples', got {line[:80]!r}")
        rel = cols[0]
        full = os.path.realpath(os.path.join(root, rel))
        if os.path.isabs(rel) or os.path.commonpath([real_root, full]) != real_root:
            raise ExtractError(f"--corpus {corpus}, line {n}: {rel!r} is outside the root {root}; paths must be relative to it")
        rels.append(os.path.normpath(rel))
    return root, rels


def list_files(corpus: str) -> tuple[str, list[str]]:
    """(root, relative paths) of a directory tree or a fairseq TSV manifest."""
    if os.path.isdir(corpus):
        return os.path.abspath(corpus), _walk(os.path.abspath(corpus))
    if os.path.isfile(corpus):
        return _read_tsv(corpus)
    raise ExtractError(f"--corpus {corpus}: no such directory or TSV manifest")


def _header(root: str, rel: str, rate: int, min_samples: int, max_seconds: float) -> Utterance | BadFile:
    path = os.path.join(root, rel)
    try:
        info = sf.info(path)
    except Exception as e:  # noqa: BLE001 - soundfile raises several types for unreadable files
        reason = "no such file" if not os.path.exists(path) else f"not readable as audio ({str(e).splitlines()[0][:120]})"
        return BadFile(path, reason)
    uid = os.path.splitext(rel)[0].replace(os.sep, "/")
    utt = Utterance(uid, path, int(info.frames), int(info.samplerate), int(info.channels))
    if utt.samples == 0:
        return BadFile(path, "empty (0 samples)")
    if utt.samples_at(rate) < min_samples:
        return BadFile(path, f"too short: {utt.samples_at(rate)} samples at {rate} Hz, the teacher needs at least {min_samples}")
    if max_seconds and utt.seconds > max_seconds:
        return BadFile(path, f"{utt.seconds:.1f} s is longer than --max-seconds {max_seconds:g}; raise it or split the file")
    return utt


def scan(corpus: str, rate: int, min_samples: int = MIN_SAMPLES, max_seconds: float = 0) -> tuple[str, list[Utterance], list[BadFile]]:
    """Read every header (threads: it is I/O) and sort the corpus into good and bad files."""
    root, rels = list_files(corpus)
    if not rels:
        raise ExtractError(f"--corpus {corpus}: no audio files found (formats: {', '.join(sorted(sf.available_formats()))})")
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda r: _header(root, r, rate, min_samples, max_seconds), rels))
    good = [r for r in results if isinstance(r, Utterance)]
    bad = [r for r in results if isinstance(r, BadFile)]
    seen: dict[str, str] = {}
    for u in good:
        if u.uid in seen:
            bad.append(BadFile(u.path, f"same utterance id '{u.uid}' as {seen[u.uid]}; rename one"))
        seen.setdefault(u.uid, u.path)
    dup = {b.path for b in bad}
    return root, [u for u in good if u.path not in dup], bad
