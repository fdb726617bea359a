"""What to extract: a corpus (directory or fairseq TSV) as a list of utterances, from headers only.

Like lhotse's manifests, this says *what* (ids, paths, lengths); the store decides where it lives.
"""

from __future__ import annotations

import os
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


def list_files(corpus: str) -> tuple[str, list[str]]:
    """(root, relative paths) of a directory tree or a fairseq TSV manifest."""
    if os.path.isdir(corpus):
        exts = _audio_extensions()
        root = os.path.abspath(corpus)
        found = []
        for d, subdirs, files in os.walk(root, followlinks=True):
            subdirs.sort()
            found.extend(os.path.relpath(os.path.join(d, f), root) for f in sorted(files) if os.path.splitext(f)[1].lower() in exts)
        return root, found
    if os.path.isfile(corpus):
        with open(corpus) as f:
            lines = [ln.rstrip("\n") for ln in f if ln.strip()]
        if not lines or not os.path.isdir(lines[0].strip()):
            raise ExtractError(f"{corpus}: a TSV manifest's first line must be the audio root directory (got {lines[:1]})")
        return os.path.abspath(lines[0].strip()), [ln.split("\t")[0] for ln in lines[1:]]
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
