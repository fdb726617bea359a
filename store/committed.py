"""A cache's committed parts, merged from their markers: where each utterance's rows are (part, first frame, frames,
first sample, samples), the parts that cannot be used and why, and the totals a Cache reports. store.reader's Cache
holds one and re-merges on refresh(); reading rows is the reader's."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate, repeat
from typing import NamedTuple

import numpy as np

from store.fidelity import merge_error_sums


class Location(NamedTuple):
    """Where one utterance's rows are: its part's attempt directory, then its rows in the layer arrays (feature frames)
    and in the audio array (samples)."""

    dir: str
    first_frame: int
    frames: int
    first_sample: int
    samples: int


@dataclass
class Committed:
    """What the committed markers of a cache say, merged: where each utterance's rows are, and the cache's totals."""

    # uid -> (its part's attempt directory, its index in the part: its FLAC file's name for --audio flac); its Location is
    # made when asked (Cache._locate) from _rows_by_dir: a LibriSpeech-sized open builds 281k small tuples in C, not objects
    _where: dict[str, tuple[str, int]] = field(default_factory=dict)
    _rows_by_dir: dict[str, tuple[list, list, list, list]] = field(default_factory=dict)  # frames, samples, and their starts
    _ids_by_dir: dict[str, list[str]] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)
    part_dirs: dict[str, str] = field(default_factory=dict)
    part_rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # part -> (frames, samples)
    damaged: dict[str, str] = field(default_factory=dict)  # part -> why its marker cannot be used
    duplicates: list[str] = field(default_factory=list)
    _skipped_in_parts: list[dict] = field(default_factory=list)
    _recordings: dict[str, str] = field(default_factory=dict)
    part_corpus: dict[str, str] = field(default_factory=dict)  # part -> the --corpus input it came from
    audio_clipped: int = 0
    stored_error: dict[str, dict] = field(default_factory=dict)  # lossy modes: layer -> error sums over the parts recording them
    parts_with_error: int = 0
    bytes: int = 0  # what the parts' markers say their shards hold; parts_with_bytes of them say it (older ones do not)
    parts_with_bytes: int = 0
    total_frames: int = 0
    total_samples: int = 0


def committed_parts(path: str, spec: dict, provenance: dict, markers: dict) -> Committed:
    """Merge every part's marker (a dict, or the one line saying why it cannot be used) into one Committed."""
    c = Committed()
    first_corpus = provenance.get("corpus_input") or provenance.get("corpus") or "?"  # caches before per-part records
    for part in sorted(markers):
        marker = markers[part]
        if isinstance(marker, str):
            c.damaged[part] = marker
            continue
        if not counts_agree(spec, marker):
            c.damaged[part] = (f"{path}/commits/{part}.json: its frame counts disagree with its sample counts; "
                               "re-run extract-features with --repair to redo that part")
            continue
        c.parts.append(part)
        c.part_dirs[part] = marker["dir"]
        c.part_corpus[part] = marker.get("corpus") if isinstance(marker.get("corpus"), str) else first_corpus
        c.audio_clipped += int(marker.get("audio_clipped") or 0)
        if type(marker.get("bytes")) is int:
            c.bytes += marker["bytes"]
            c.parts_with_bytes += 1
        if marker.get("error"):
            c.parts_with_error += 1
            for layer, sums in marker["error"].items():
                c.stored_error[layer] = merge_error_sums(c.stored_error.get(layer), sums)
        c._skipped_in_parts.extend(marker.get("skipped", []))
        recordings = marker.get("recordings")
        if isinstance(recordings, dict):
            c._recordings.update(recordings)
        d, ids, frames, samples = marker["dir"], marker["ids"], marker["frames"], marker["samples"]
        if not c._where.keys().isdisjoint(ids):
            c.duplicates += [f"utterance '{uid}' is in parts {c._where[uid][0]} and {d}" for uid in ids if uid in c._where]
        c._where.update(zip(ids, zip(repeat(d, len(ids)), range(len(ids)), strict=True), strict=True))
        starts = list(accumulate(frames, initial=0)), list(accumulate(samples, initial=0))
        c._rows_by_dir[d] = (frames, samples, *starts)
        c._ids_by_dir.setdefault(d, []).extend(ids)
        c.total_frames += starts[0][-1]
        c.total_samples += starts[1][-1]
        c.part_rows[part] = (starts[0][-1], starts[1][-1])
    return c


def counts_agree(spec: dict, marker: dict) -> bool:
    """Each utterance's frames are what the teacher's convs give its samples: a hand-shuffled frame list (sum kept)
    would otherwise send every read to another utterance's rows."""
    frame = spec.get("frame") or {}
    window, hop = frame.get("window"), frame.get("hop")
    if not (isinstance(window, int) and isinstance(hop, int) and hop > 0):
        return True  # a spec without a frame rule (validate_spec refuses that for new caches): nothing to compare with
    try:  # numpy: this runs for every utterance on every open
        samples, frames = np.asarray(marker["samples"], dtype=np.int64), np.asarray(marker["frames"], dtype=np.int64)
    except OverflowError:  # a hand-edited count beyond 2**63: no real part has it
        return False
    return bool(np.array_equal(frames, np.where(samples >= window, (samples - window) // hop + 1, 0)))
