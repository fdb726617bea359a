"""A teacher's identity without the teacher: what names its cache (the spec), remembered in the cache root, so that a
re-run with nothing to do does not load it.

The load (torch and transformers imported, every weight read and hashed) was a third of a LibriSpeech-sized re-run with
nothing to do, and nearly all of a small one's. What the spec needs of a teacher (its digest, class, forward config,
sample rate, normalisation, conv shape) is kept in `<cache root>/.teachers.json` after each load, under the stat of
every file of its directory, and trusted like a source record: only while every file has the recorded size, mtime,
ctime and inode (any write moves the ctime, which no user can set back), none was written within a timestamp tick of the
moment the teacher was read (git's racy-clean rule), and for the same torch and transformers versions (a config may read
differently under another). Local directories only: a hub name is loaded as before. A run that finds work loads the
real teacher and checks that its spec is the remembered one: a wrong record is loud there, never a wrong cache's
targets. torch-free on purpose: importing it costs nothing of what it saves.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass
from importlib import metadata

from extract.errors import ExtractError
from store import fs, source_files
from store.spec import DTYPES, TARGETS_VERSION

MEMO = ".teachers.json"
KEEP = 32  # teachers remembered per cache root (the most recent)


def conv_lengths(n, kernels: list[int], strides: list[int]):
    """Output length of a stack of unpadded convs (int or tensor), as transformers computes it."""
    for k, s in zip(kernels, strides, strict=True):
        n = (n - k) // s + 1
    return n


@dataclass
class KnownTeacher:
    """What extraction needs of a teacher before any forward pass; extract.teacher.Teacher.known() makes one."""

    name: str
    identity: dict  # the spec's "teacher": digest, class, config (forward keys), layer_definition
    num_layers: int
    hidden_size: int
    sample_rate: int
    do_normalize: bool
    conv_kernel: list[int]
    conv_stride: list[int]
    preprocessing: dict  # the spec's "preprocessing"
    compute_dtype: str = "float32"

    @property
    def hop(self) -> int:
        hop = 1
        for s in self.conv_stride:
            hop *= s
        return hop

    @property
    def window(self) -> int:
        r = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride), strict=True):
            r = (r - 1) * s + k
        return r

    def num_frames(self, samples: int) -> int:
        return max(0, int(conv_lengths(samples, self.conv_kernel, self.conv_stride)))

    def check_layers(self, layers: list[int]) -> list[int]:
        bad = [k for k in layers if not 0 <= k <= self.num_layers]
        if bad or not layers:
            raise ExtractError(f"--layers {','.join(map(str, layers))}: teacher {self.name} has layers 0..{self.num_layers} "
                               "(0 = input to layer 1, K = output of layer K)")
        return sorted(set(layers))

    def spec(self, layers: list[int], storage_dtype: str, audio: str = "float32") -> dict:
        # copies: a caller adds to the spec it gets (segments, statistics), never to this teacher's record
        return {"format_version": TARGETS_VERSION, "teacher": copy.deepcopy(self.identity), "layers": self.check_layers(layers),
                "dim": self.hidden_size, "compute_dtype": self.compute_dtype, "storage_dtype": storage_dtype, "audio": audio,
                "preprocessing": copy.deepcopy(self.preprocessing), "frame": {"window": self.window, "hop": self.hop}}


def check_options(device: str, dtype: str) -> None:
    """--device and --dtype as extract.teacher checks them when it loads (without torch: the syntax only; whether CUDA is
    there is asked when the teacher loads, i.e. when there is work)."""
    if dtype not in DTYPES:
        raise ExtractError(f"--dtype {dtype}: choose one of {', '.join(sorted(DTYPES))}")
    kind, _, index = device.partition(":")
    if device != "auto" and (kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit()))):
        raise ExtractError(f"--device {device}: distilcache runs on cpu or cuda; use auto, cpu, cuda or cuda:N")


def stamp(name: str, revision: str | None, allow_pickle: bool) -> dict | None:
    """What a teacher's record is kept under: its directory, every file's stat, the versions that read it. None for a
    hub name, an s3prl checkpoint, or a directory with subdirectories (not what save_pretrained writes)."""
    if not os.path.isdir(name):
        return None
    path = os.path.realpath(name)
    files = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=True):
            return None
        st = entry.stat()
        files.append([entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    try:
        versions = {p: metadata.version(p) for p in ("torch", "transformers")}
    except metadata.PackageNotFoundError:
        return None
    return {"path": path, "revision": revision, "allow_pickle": allow_pickle, "files": files, "versions": versions,
            "targets_version": TARGETS_VERSION}


def _read(root: str) -> list:
    try:
        entries = fs.read_json(os.path.join(root, MEMO)).get("teachers")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return []
    return entries if isinstance(entries, list) else []


def remembered(root: str, key: dict | None, name: str, compute_dtype: str) -> KnownTeacher | None:
    """The teacher recorded under exactly this stamp, if its record can be trusted (see the module docstring)."""
    if key is None or fs.is_remote(root):
        return None
    for entry in _read(root):
        if not isinstance(entry, dict) or entry.get("key") != key or type(entry.get("taken_ns")) is not int:
            continue
        if any(source_files.racy({"mtime_ns": f[2], "ctime_ns": f[3], "taken_ns": entry["taken_ns"]}) for f in key["files"]):
            return None  # written in the tick it was read: it may have changed unseen since; load it
        try:
            return KnownTeacher(**{**entry["teacher"], "name": name, "compute_dtype": compute_dtype})
        except TypeError:
            return None
    return None


def remember(root: str, key: dict | None, began: int, teacher: KnownTeacher) -> None:
    """Keep the record of a teacher loaded from the files `key` describes (stamped before the load and unchanged after:
    the caller checks), read at `began` by this host's clock, which is moved to the file system's clock of `root` (the
    racy rule compares the files' stamps with it). Called once a run has passed its refusals: a refused run leaves no
    record behind. Best effort: speed only."""
    if key is None or fs.is_remote(root) or not os.path.isdir(root):
        return
    skew = source_files.fs_clock(root)() - time.time_ns()
    record = {k: v for k, v in asdict(teacher).items() if k not in ("compute_dtype", "name")}
    entries = [e for e in _read(root) if isinstance(e, dict) and isinstance(e.get("key"), dict) and e["key"].get("path") != key["path"]]
    entries.append({"key": key, "taken_ns": began + skew, "teacher": record})
    try:
        fs.write_json_atomic(os.path.join(root, MEMO), {"teachers": entries[-KEEP:]})
    except OSError:
        pass


def check_same(known: KnownTeacher, loaded: KnownTeacher, name: str, root: str) -> None:
    """The teacher loaded for work must be the one remembered: its cache was chosen by the record."""
    if {**asdict(known), "name": ""} != {**asdict(loaded), "name": ""}:
        raise ExtractError(f"--teacher {name}: it is not what {os.path.join(root, MEMO)} recorded of it (changed while this "
                           "run read it, or the record was edited); nothing was written: run the command again")
