"""Integrity check of a cache with the project's own reader: every chunk the index needs exists and passes its
crc32c, every array's metadata matches the spec, and (optionally) every source file is unchanged.

Why not zarr-python: it decodes chunk by chunk in one process (0.26 s per part of overhead, 25-50 min
before any payload at LibriSpeech scale) and reads a missing chunk as zeros, the fill value, so a
deleted shard file passed. Here a missing shard or chunk is damage, parts are checked in parallel.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from store import fs
from store.audio_modes import FLAC_DIR
from store.chunks import _MISSING, ShardedRows, meta_problem, shard_file, shards_record_problems
from store.errors import CorruptDataError
from store.index import read_index, read_marker, read_markers, refresh_sources
from store.layout import checked_path, part_path, read_json, write_json_atomic
from store.lock import LockedError, exclusive
from store.reader import Cache
from store.source_files import check_sources, fs_clock, lying_headers


class RowDigest:
    """sha256 of an array's rows in order, fed chunk by chunk (what the writer recorded at commit: store.writer); with
    `cuts`, also each utterance's audio_digest (the marker's per-utterance sha256 of the teacher's float32 input)."""

    def __init__(self, cuts: list[int] | None = None):
        self.whole = hashlib.sha256()
        self.cuts, self.row, self.parts = list(cuts or []), 0, []
        self._one = hashlib.sha256() if self.cuts else None

    def update(self, rows) -> None:
        self.whole.update(rows.tobytes())
        while self._one is not None and len(rows):
            take = min(len(rows), self.cuts[len(self.parts)] - self.row)
            self._one.update(rows[:take].tobytes())
            rows, self.row = rows[take:], self.row + take
            if self.row == self.cuts[len(self.parts)]:
                self.parts.append(self._one.hexdigest()[:16])
                self._one = hashlib.sha256() if len(self.parts) < len(self.cuts) else None


def check_array(array_dir: str, expected: tuple, rows: int, codec: str, full: bool, digest: RowDigest | None = None) -> list[str]:
    """Problems with one array: metadata against the spec, then every shard and chunk that `rows` needs (their rows fed to
    `digest` in order)."""
    _, _, chunk_rows, shard_rows = expected
    try:
        meta = read_json(os.path.join(array_dir, "zarr.json"))
    except (OSError, ValueError) as e:
        return [f"{array_dir}: missing or unreadable metadata ({type(e).__name__})"]
    problem = meta_problem(array_dir, meta, expected, rows, codec)
    if problem:
        return [problem]
    reader = ShardedRows(array_dir, meta)
    if not full:  # structure only: every shard file is there (one stat each, cheap enough for every extraction run)
        return [f"{reader._shard_file(s)}: shard file is missing" for s in range(-(-rows // shard_rows))
                if not fs.exists(reader._shard_file(s))]
    problems = []
    for s in range(-(-rows // shard_rows)):
        name = reader._shard_file(s)
        try:
            with fs.open_file(name, "rb") as f:  # every byte is checked: one read of the whole shard, not one per chunk
                f = io.BytesIO(f.read())
                index = reader._shard_index(s, f)
                last = min(rows - s * shard_rows, shard_rows)
                for c in range(-(-last // chunk_rows)):
                    if index[c][0] == _MISSING:
                        problems.append(f"{array_dir}: chunk {c} of shard {s} is missing")
                        continue  # rows are missing: the caller compares no digest once there is a problem
                    rows_here = reader._chunk(f, s, c)
                    if digest is not None:
                        digest.update(rows_here[: min(chunk_rows, last - c * chunk_rows)])
        except FileNotFoundError:
            problems.append(f"{name}: shard file is missing")
        except (CorruptDataError, ValueError, OSError) as e:
            problems.append(f"{name}: damaged ({str(e).splitlines()[0][:200]})")
    return problems


def check_part(cache: Cache, part: str, full: bool = True) -> list[str]:
    """Problems with one committed part (structure only when full=False: cheap enough for every extraction run). The full
    check also compares every array's rows with the digests its commit marker recorded: rows shuffled, or audio of two
    utterances swapped, and written back through zarr have valid checksums, but not the digests."""
    frames, samples = cache.part_rows[part]
    problems = []
    marker = read_marker(cache.path, part) if full else None
    recorded = marker.get("digests", {}) if isinstance(marker, dict) else {}
    uids = cache.part_uids(part)
    for key, expected in cache._expected_arrays().items():
        array_dir = os.path.join(part_path(cache.path, cache.part_dirs[part]), key)
        exact_audio = key == "audio" and cache.audio_mode == "float32" and isinstance(marker, dict) \
            and isinstance(marker.get("sha256"), list) and len(marker["sha256"]) == len(uids)
        digest = RowDigest(list(np.cumsum([cache.num_samples(u) for u in uids])) if exact_audio else None) if full else None
        found = check_array(array_dir, expected, samples if key == "audio" else frames, cache.layout.codec, full, digest)
        if not found and digest is not None:
            if key in recorded and digest.whole.hexdigest() != recorded[key]:
                found.append(f"{array_dir}: its rows are not the ones committed (digest differs from the commit marker's): "
                             "rewritten or reordered after the commit")
            if exact_audio:
                wrong = [u for u, d, want in zip(uids, digest.parts, marker["sha256"], strict=False) if want and d != want]
                if wrong:
                    found.append(f"{array_dir}: the audio of {len(wrong)} utterance(s) is not what the teacher saw (first: "
                                 f"'{wrong[0]}'); rewritten after the commit")
        if not found and isinstance(marker, dict) and key in (marker.get("shards") or {}):
            found = shards_record_problems(array_dir, expected, samples if key == "audio" else frames, marker["shards"][key])
        problems += found
    if cache.audio_mode == "flac":
        problems += check_flac(cache, part, full, recorded.get(FLAC_DIR))
    return problems


def check_flac(cache: Cache, part: str, full: bool, recorded: str | None = None) -> list[str]:
    """Every utterance's FLAC file is there; with full, it decodes to the samples its marker says, and the files in order
    are the bytes the marker's digest recorded."""
    import soundfile as sf

    problems = []
    flac_dir = os.path.join(part_path(cache.path, cache.part_dirs[part]), FLAC_DIR)
    digest = hashlib.sha256()
    for uid in cache.part_uids(part):
        name = os.path.join(flac_dir, f"{cache._where[uid][1]}.flac")
        if not fs.exists(name):
            problems.append(f"{name}: audio file of '{uid}' is missing")
        elif full:
            try:
                with fs.open_file(name, "rb") as f:
                    blob = f.read()
                digest.update(blob)
                n = sf.info(io.BytesIO(blob)).frames
            except (RuntimeError, OSError) as e:
                problems.append(f"{name}: damaged ({str(e)[:120]})")
                continue
            if n != cache.num_samples(uid):
                problems.append(f"{name}: holds {n} samples, the commit marker says {cache.num_samples(uid)}")
    if full and not problems and recorded and digest.hexdigest() != recorded:
        problems.append(f"{flac_dir}: its audio files are not the ones committed (digest differs from the commit marker's): "
                        "rewritten or swapped after the commit")
    return problems


def bad_markers(cache: Cache) -> dict[str, str]:
    """part -> why its marker is unusable or disagrees with the consolidated index (which a reader may have used instead)."""
    found = dict(cache.damaged)
    for part, marker in read_markers(cache.path, cache.parts).items():
        if isinstance(marker, str):
            found[part] = marker
        elif marker["dir"] != cache.part_dirs[part] or (sum(marker["frames"]), sum(marker["samples"])) != cache.part_rows[part]:
            found[part] = (f"{cache.path}/commits/{part}.json: disagrees with index.json; re-run extract-features with --repair "
                           "to redo that part")
    return found


def structure_stamp(cache: Cache, part: str) -> list | None:
    """Stats of the part's directory, each array's zarr.json and the FLAC directory (whose files it holds directly):
    metadata edited or replaced changes them. None when one is missing."""
    base = part_path(cache.path, cache.part_dirs[part])
    paths = [base, *(os.path.join(base, k, "zarr.json") for k in cache._expected_arrays())]
    stamp = [fs.file_stamp(path) for path in paths + ([os.path.join(base, FLAC_DIR)] if cache.audio_mode == "flac" else [])]
    return None if None in stamp else stamp


def shards_present(cache: Cache, part: str) -> list[str]:
    """The structure check of a part whose metadata is stamped unchanged: every shard file its rows need is there
    (shards sit in a directory each, so no directory stamp stands for them)."""
    base = part_path(cache.path, cache.part_dirs[part])
    frames, samples = cache.part_rows[part]
    missing = []
    for key, (_, tail, _, shard_rows) in cache._expected_arrays().items():
        for s in range(-(-(samples if key == "audio" else frames) // shard_rows)):
            name = shard_file(os.path.join(base, key), s, 1 + len(tail))
            if not os.path.exists(name):
                missing.append(f"{name}: shard file is missing")
    return missing


def damaged_parts(cache: Cache, full: bool = False, threads: int = 4) -> dict[str, list[str]]:
    """part -> its problems, for the parts that have any (markers that cannot be read included).

    The structure check (full=False) of a local cache reads the metadata only of parts whose stamp is not the one
    checked.json recorded after their last clean check (docs/cache-format.md); it must run under the cache's lock,
    which writes checked.json."""
    memo = not full and not fs.is_remote(cache.path)
    old = _checked(cache) if memo else {}
    stamps = {p: structure_stamp(cache, p) for p in cache.parts} if memo else {}

    stamped = [p for p in cache.parts if memo and stamps[p] is not None and old.get(p) == [cache.part_dirs[p], stamps[p]]]
    found = {p: shards_present(cache, p) for p in stamped}  # in this thread: threads only slowed these stats down (GIL)
    todo = [p for p in cache.parts if p not in found]
    with ThreadPoolExecutor(threads) as pool:
        found.update(zip(todo, pool.map(lambda p: check_part(cache, p, full), todo), strict=True))
    if memo:
        new = {p: [cache.part_dirs[p], stamps[p]] for p in cache.parts if stamps[p] is not None and not found[p]}
        if new != old:
            write_json_atomic(checked_path(cache.path), {"parts": new})
    markers = bad_markers(cache) if full else cache.damaged  # reading every marker costs seconds at full size
    return {p: v for p, v in found.items() if v} | {p: [why] for p, why in markers.items()}


def _checked(cache: Cache) -> dict:
    try:
        data = read_json(checked_path(cache.path))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    parts = data.get("parts") if isinstance(data, dict) else None
    return parts if isinstance(parts, dict) else {}


def verify_cache(path: str, progress=None, sources: bool = False, full: bool = True, workers: int | None = None) -> list[str]:
    """One line per problem; empty means every committed byte (and, with sources, every source file) checked out.
    `workers`: processes checking parts side by side (default: one per core)."""
    cache = Cache(path)
    problems = list(bad_markers(cache).values()) + [f"{cache.path}: {d}" for d in cache.duplicates]
    listed = set(cache.parts) | set(cache.damaged)
    problems += [f"{cache.path}/index.json: names part {p} whose commit marker is gone; re-run extract-features with --repair to "
                 "redo it"
                 for p in sorted(set(read_index(cache.path)) - listed)]
    try:
        stats = cache.stats  # a codebook mode's codebooks are arrays of their own: without them nothing decodes
        if cache.mode.needs_stats and (not stats or set(stats) != set(cache.layers)):
            problems.append(f"{cache.path}: statistics for layers {cache.layers} are missing; re-create the cache")
    except CorruptDataError as e:
        problems.append(str(e))

    problems += check_parts(cache, full, workers, progress)
    if sources:
        problems += changed_sources(cache)
    return problems


_worker_cache: Cache | None = None


def _open_in_worker(path: str) -> None:
    global _worker_cache
    _worker_cache = Cache(path)


def _check_in_worker(parts: list[str], full: bool) -> list[list[str] | None]:
    return [_check_committed(_worker_cache, p, full) for p in parts]


def _check_committed(cache: Cache, part: str, full: bool) -> list[str] | None:
    """check_part, or None for a part that is not committed (any more): an extraction retook it after the listing."""
    if part not in cache.part_rows:
        cache.refresh_if_changed()
        if part not in cache.part_rows:
            return None
    return check_part(cache, part, full)


def _recheck_moved(cache: Cache, results: dict[str, list[str] | None], full: bool) -> list[str]:
    """A part an extraction retook while verify ran (its marker gone, its files removed, maybe committed again) is no
    damage: its problems or absence are checked once more against what is committed now. Parts that are still gone
    are not committed: there is nothing of them to verify."""
    suspect = [p for p, found in results.items() if found is None or found]
    if suspect:
        before = dict(cache.part_dirs)
        cache.refresh()
        for p in suspect:
            if p not in cache.part_rows:
                results[p] = []
            elif results[p] is None or cache.part_dirs[p] != before.get(p):
                results[p] = check_part(cache, p, full)
    return [line for found in results.values() for line in found or []]


def check_parts(cache: Cache, full: bool, workers: int | None = None, progress=None) -> list[str]:
    """check_part of every part, in `workers` processes (default: one per core). Processes, not threads: a part's check
    is ~1,900 chunk reads, crc32c and decodes, mostly Python, and threads measured no faster than one (GIL); each
    worker opens the cache itself (pickling a LibriSpeech-sized index to every task would cost more than the check)."""
    workers = max(1, min(workers or os.cpu_count() or 1, 64, len(cache.parts)))
    parts = list(cache.parts)
    results: dict[str, list[str] | None] = dict.fromkeys(parts)  # in the parts' order
    if workers == 1 or fs.is_remote(cache.path):  # object stores: requests, which threads overlap well enough
        with ThreadPoolExecutor(1 if workers == 1 else 8) as pool:
            for part, found in zip(parts, pool.map(lambda p: _check_committed(cache, p, full), parts), strict=True):
                results[part] = found
                if progress:
                    progress(part)
        return _recheck_moved(cache, results, full)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    size = max(1, min(8, len(parts) // (4 * workers)))  # a few batches per worker: the slow ones even out
    batches = [parts[i : i + size] for i in range(0, len(parts), size)]
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads (zarr, torch)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_open_in_worker, initargs=(cache.path,))
    done: set[str] = set()
    try:
        futures = {pool.submit(_check_in_worker, b, full): b for b in batches}
        for future in as_completed(futures):
            results.update(zip(futures[future], future.result(), strict=True))
            done.update(futures[future])
            if progress:
                for part in futures[future]:
                    progress(part)
    except BrokenProcessPool:  # a worker killed (the OOM killer, a signal): the rest is checked here, said, not lost
        # exit codes read once the workers are reaped: read while the pool's thread reaps them, the dead one can show none
        codes = {p.exitcode for p in end_workers(pool) if p.exitcode}
        codes = sorted(codes - {-15} or codes) or ["unknown"]  # -15: the pool's own end of the others, once one died
        rest = [p for p in parts if p not in done]
        print(f"{cache.path}: a verify worker process died (exit code {', '.join(map(str, codes))}; a negative one is the signal "
              f"that ended it); checking the other {len(rest)} part(s) in this process", file=sys.stderr)
        for part in rest:
            results[part] = _check_committed(cache, part, full)
            if progress:
                progress(part)
        return _recheck_moved(cache, results, full)
    except BaseException:  # Ctrl-C, an error: the workers go too, not left holding the index and our output pipes
        end_workers(pool)
        raise
    pool.shutdown()
    return _recheck_moved(cache, results, full)


def end_workers(pool) -> list:
    """Terminate a process pool's workers and wait for them: shutdown() alone waits for the checks they are running.
    Returns the worker processes, reaped."""
    procs = list((pool._processes or {}).values())  # private, but the pool has no public way to stop a running task
    manager = getattr(pool, "_executor_manager_thread", None)  # reaps the workers too, racing ours on waitpid
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(5)
    if manager is not None:
        manager.join(5)
    return procs


def repair_commands(cache: Cache) -> list[str]:
    """The commands that redo damaged parts: extract-features with the cache's own spec and
    --repair (which checks every crc32c, as verify did; without it a checksum-damaged part looks complete), once per
    --corpus input the parts came from. A derived cache is rebuilt from its source; an import has no corpus to redo from."""
    import shlex

    q = shlex.quote
    root = os.path.dirname(cache.path.rstrip("/"))
    prov, spec = cache.provenance, cache.spec
    if spec.get("derived_from"):
        source = prov.get("derived_from") or spec["derived_from"]["fingerprint"]
        return [f"feature-cache rm {q(cache.path)} --yes && feature-cache convert {q(source)} "
                f"--storage {spec['storage_dtype']} --audio {cache.audio_mode} --cache-dir {q(root)}"]
    corpora = sorted(set(cache.part_corpus.values()))
    if not prov.get("teacher") or not corpora or corpora == ["?"]:
        return [f"feature-cache rm {q(cache.path)} --yes, then import or extract it again"]
    seg = spec["preprocessing"].get("segments")
    flags = (f"--layers {','.join(map(str, cache.layers))} --dtype {spec['compute_dtype']} --storage {spec['storage_dtype']} "
             f"--audio {cache.audio_mode} --cache-dir {q(root)}"
             + (f" --revision {q(prov['revision'])}" if prov.get("revision") else "")
             + (f" --segment-seconds {seg['seconds']:g} --segment-overlap {seg['overlap']:g}" if seg else ""))
    return [f"extract-features --teacher {q(prov['teacher'])} --corpus {q(c)} {flags} --repair" for c in corpora]


def changed_sources(cache: Cache) -> list[str]:
    """Source files that changed, and records whose header disagrees with their (unchanged) file's: a re-run plans windows
    from those headers (extract.corpus.scan checks them there too)."""
    records = cache.sources()
    whys, fresh = check_sources(records.items(), fs_clock(cache.path), cache.part_of)
    keep_refreshed(cache, fresh)
    gone = {records[uid]["path"] for uid in whys}
    return list(whys.values()) + list(lying_headers(r for r in records.values() if r["path"] not in gone).values())


def keep_refreshed(cache: Cache, fresh: dict[str, dict[str, dict]]) -> None:
    """Keep the records of files verify re-hashed and found unchanged (a file is re-hashed once, not on every verify),
    when it can take the cache's lock: a running extraction rewrites sources.npz itself (and refreshes them there); a
    read-only or remote cache keeps them as they are. A part retaken since it was checked is left out."""
    if not fresh or fs.is_remote(cache.path):
        return
    dirs = dict(cache.part_dirs)
    try:
        with exclusive(cache.path):
            cache.refresh_if_changed()
            refresh_sources(cache.path, {p: f for p, f in fresh.items() if dirs.get(p) and cache.part_dirs.get(p) == dirs[p]})
    except (LockedError, OSError):
        return


