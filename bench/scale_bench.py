"""LibriSpeech-scale index, tiny payload: what every command that reads no payload costs at full size.

    python -m bench.scale_bench                 # 281,241 utterances in 5,740 parts, locally
    python -m bench.scale_bench --scale 0.05 --s3   # also on a moto S3 server on loopback (a 5% cache)
    python -m bench.scale_bench --rerun --keep /tmp/scale-rerun --base /tmp/base   # extract-features with nothing to do
    (at full size, with every source record real but a tiny payload: python -m bench.rerun_bench)

--rerun builds a LibriSpeech-shaped corpus tree (281,241 FLAC files of 12.2 s of silence, 616 bytes each) and its cache:
one part extracted for real by a tiny teacher (49 files, 600 s: ~1,900 chunks, as a real part has), copied into 5,740
parts whose markers record each real file (stat, sha256, header), then times `extract-features` on the same corpus in a
fresh process (nothing to do) for this checkout and, with --base, another (a `git worktree` of the commit before).

Builds the real index shape (ids, parts of 49 utterances, commit markers with source records) with a
5-frame, 4-dim payload per utterance: one template part written by PartWriter, copied per part, each
with its own marker. Each command runs in a fresh process; we report its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import moto_server, table

UTTERANCES, PER_PART = 281_241, 49  # LibriSpeech 960 h; ~600 s of audio per part

SNIPPETS = {
    "open": "from store import open_cache; c = open_cache(P); print(len(c))",
    "ls": "from store import list_caches; print(len(list_caches(os.path.dirname(P))))",
    "info": "from store import open_cache, describe; d = describe(open_cache(P)); print(d['utterances'])",
    "verify (structure)": "from store.verify import damaged_parts; from store import open_cache; print(len(damaged_parts(open_cache(P))))",
    "verify (every crc32c)": "from store import verify_cache; print(len(verify_cache(P)))",
    "split_ids (by recording)": ("from store import open_cache; from train.data import split_ids; c = open_cache(P);"
                                 "print(len(split_ids(c.utterance_ids, 0.01, c.recording)[1]))"),
    "resume skip (100k steps)": ("from store import open_cache; from train.data import BucketBatches; c = open_cache(P);"
                                 "b = BucketBatches([min(c.num_samples(u), 250000) for u in c.utterance_ids], 24, 0);"
                                 "next(b.from_step(100000))"),
}


def build(root: str, utterances: int) -> str:
    from store import Layout, PartWriter, create_cache
    from store.index import consolidate
    from store.layout import commit_path, part_name
    from store.writer import audio_digest

    spec = {"format_version": 2, "teacher": {"digest": "sha256:scale", "config": {"hidden_size": 4}}, "layers": [4, 8, 12], "dim": 4,
            "compute_dtype": "float32", "storage_dtype": "float16",
            "preprocessing": {"sample_rate": 16000, "mono": "mean", "resampler": "soxr-HQ", "normalize": False},
            "frame": {"window": 400, "hop": 320}}
    from store.spec import TARGETS_VERSION

    spec["format_version"] = TARGETS_VERSION
    layout = Layout()
    path = create_cache(root, spec, {"teacher": "scale-bench"}, layout)
    import numpy as np

    audio = np.zeros(400 + 320 * 4, np.float32)
    feats = {k: np.zeros((5, 4), np.float32) for k in (4, 8, 12)}
    template = PartWriter(path, "template", [4, 8, 12], 4, "float16", layout)
    for j in range(PER_PART):
        template.add(f"t{j}", feats, audio)
    marker = template.commit()
    os.remove(commit_path(path, "template"))
    utterances = -(-utterances // PER_PART) * PER_PART  # whole parts: the template's arrays hold PER_PART utterances
    ids = [f"{s // 1000}/{s // 100}/{s // 1000}-{s // 100}-{s:04d}" for s in range(utterances)]
    for start in range(0, utterances, PER_PART):
        chunk = ids[start : start + PER_PART]
        name = part_name(chunk)
        d = f"{name}.000000000000"
        shutil.copytree(f"{path}/parts/{marker['dir']}", f"{path}/parts/{d}")
        m = dict(marker, part=name, dir=d, ids=chunk, frames=[5] * len(chunk), samples=[len(audio)] * len(chunk),
                 sha256=[audio_digest(audio)] * len(chunk), total_frames=5 * len(chunk), total_samples=len(audio) * len(chunk),
                 sources=[{"path": f"/data/LibriSpeech/{u}.flac", "size": 1, "mtime_ns": 1, "sha256": "0" * 64} for u in chunk])
        with open(commit_path(path, name), "w") as f:
            json.dump(m, f)
    shutil.rmtree(f"{path}/parts/{marker['dir']}")
    consolidate(path)
    return path


_PEAK = ("\nprint([int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")


def measure(path: str, snippet: str, cwd: str | None = None) -> tuple[float, float]:
    """Wall time and peak RSS of a fresh process. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec,
    so every child would report this (index-building) process's peak."""
    code = f"import os, sys; P = {path!r}\n{snippet}{_PEAK}"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    if proc.returncode:
        raise SystemExit(f"bench: a measured process failed:\n{proc.stderr[-2000:]}")
    out = proc.stdout
    return time.perf_counter() - t, int(out.split()[-1]) / 1024


def s3_rows(path: str) -> list[list]:
    """Upload the cache to a moto S3 server on loopback; open it with and without the consolidated index, counting
    the requests moto logs (one line each) and the time."""
    import s3fs

    with moto_server() as log:
        fs = s3fs.S3FileSystem()
        fs.mkdir("scale")
        url = f"s3://scale/caches/{os.path.basename(path)}"
        fs.put(path, url, recursive=True)
        rows = []
        for label in ("open, consolidated index", "open, markers only (no index.json)"):
            if "no index" in label:
                fs.rm(f"{url}/index.json")
            before = log.requests()
            seconds, rss = measure(url, "import store\nfrom store import open_cache; print(len(open_cache(P)))")
            rows.append([label, f"{seconds:.2f}", str(log.requests() - before), f"{rss:.0f}"])
        return rows


FLAC_SAMPLES = 195_918  # 12.24 s: 49 files are one 600 s part


def tiny_teacher(path: str) -> None:
    """A 12-layer, 32-wide HuBERT: the default --layers 4,8,12 exist, and its part is extracted in seconds."""
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=False, sampling_rate=16000).save_pretrained(path)


def build_corpus(root: str, utterances: int, samples: int = FLAC_SAMPLES) -> str:
    """LibriSpeech's tree (speaker/chapter/speaker-chapter-utt.flac, ~113 files per chapter) of identical small FLACs."""
    import io

    import numpy as np
    import soundfile as sf

    corpus = os.path.join(root, "LibriSpeech", "train-960")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(samples, np.int16), 16000, format="FLAC", subtype="PCM_16")
    data = buf.getvalue()
    for i in range(utterances):
        spk, chap = 100 + i // 1130, 1000 + i // 113
        d = os.path.join(corpus, str(spk), str(chap))
        if i % 113 == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{spk}-{chap}-{i % 113:04d}.flac"), "wb") as f:
            f.write(data)
    return corpus


def build_extracted(root: str, corpus: str, teacher: str) -> str:
    """The cache a full extraction of `corpus` would leave, by copying one real part (see the module docstring)."""
    import hashlib

    from extract.corpora import corpus_identity
    from extract.corpus import scan
    from extract.run import ExtractConfig, extract_features
    from store import Cache
    from store.index import consolidate
    from store.layout import commit_path, part_name, plan_path
    from store.source_files import source_record

    rels = sorted(os.path.relpath(os.path.join(d, f), corpus) for d, _, fs_ in os.walk(corpus) for f in fs_)
    mini = os.path.join(root, "mini")
    os.makedirs(mini, exist_ok=True)
    for j, rel in enumerate(rels[:PER_PART]):
        shutil.copy(os.path.join(corpus, rel), os.path.join(mini, f"m{j:02d}.flac"))
    caches = os.path.join(root, "caches")
    path = extract_features(ExtractConfig(teacher=teacher, corpus=mini, cache_dir=caches, progress=False)).path
    template = Cache(path)
    (part,) = template.parts
    with open(commit_path(path, part)) as f:
        marker = json.load(f)
    digest = hashlib.sha256(open(os.path.join(corpus, rels[0]), "rb").read()).hexdigest()
    _, utts, _ = scan(corpus, 16000)
    by_uid = {u.uid: u for u in utts}
    uids = sorted(by_uid)
    n = len(uids) // PER_PART * PER_PART  # whole parts of 49: the template's arrays hold 49 utterances
    for start in range(0, n, PER_PART):
        chunk = uids[start : start + PER_PART]
        name = part_name(chunk)
        d = f"{name}.000000000000"
        shutil.copytree(f"{path}/parts/{marker['dir']}", f"{path}/parts/{d}")
        sources = [source_record(by_uid[u].path, os.stat(by_uid[u].path), digest, by_uid[u].window,
                                 (16000, FLAC_SAMPLES, 1)) for u in chunk]
        m = dict(marker, part=name, dir=d, ids=chunk, sources=sources, corpus=corpus_identity(corpus))
        with open(commit_path(path, name), "w") as f:
            json.dump(m, f)
    shutil.rmtree(f"{path}/parts/{marker['dir']}")
    os.remove(commit_path(path, part))
    os.remove(plan_path(path))
    for extra in rels[n:]:  # files that do not fill a part: not in the corpus, so that nothing is left to do
        os.remove(os.path.join(corpus, extra))
    consolidate(path)
    return caches


_RERUN = ("from extract.cli import main\ntry:\n    main(['--teacher', T, '--corpus', C, '--cache-dir', R, '--json'])\n"
          "except SystemExit as e:\n    assert not e.code, e.code\n")
_LOAD = "from extract.teacher import load_teacher\nload_teacher(T, None, 'cpu', 'float32')\n"


def rerun_rows(root: str, base: str | None, repeat: int) -> list[list]:
    """extract-features with nothing to do: wall time and peak RSS, this checkout and `base` alternating."""
    teacher, corpus, caches = (os.path.join(root, n) for n in ("teacher", "LibriSpeech/train-960", "caches"))
    where = {"this checkout": os.getcwd(), **({"base": os.path.abspath(base)} if base else {})}
    times: dict[str, list] = {k: [] for k in where}
    for _ in range(repeat):
        for label, src in where.items():
            env = f"import os, sys; sys.path.insert(0, {src!r}); T, C, R = {teacher!r}, {corpus!r}, {caches!r}\n"
            times[label].append((measure("", env + _RERUN, cwd=src), measure("", env + _LOAD, cwd=src)))
    rows = []
    for label, runs in times.items():
        secs = sorted(r[0][0] for r in runs)
        rss = sorted(r[0][1] for r in runs)
        load = sorted(r[1][0] for r in runs)
        load_rss = sorted(r[1][1] for r in runs)
        rows.append([label, f"{secs[0]:.1f}-{secs[-1]:.1f}", f"{secs[0] - load[0]:.1f}", f"{rss[0]:.0f}-{rss[-1]:.0f}",
                     f"{rss[0] - load_rss[0]:.0f}"])
    return rows


def verify_rows(root: str, parts: int, base: str | None = None, rounds: int = 2) -> list[list]:
    """feature-cache verify's per-part cost on realistic parts (the --rerun cache: ~1,900 chunks each), one process
    against one per core, interleaved."""
    from store import Cache
    from store.verify import check_parts

    caches = os.path.join(root, "caches")
    cache = Cache(os.path.join(caches, next(d for d in os.listdir(caches) if not d.startswith("."))))
    cache.parts = cache.parts[:parts]  # the first `parts` parts only: the whole cache would take minutes per round
    cores = os.cpu_count() or 1
    times: dict[int, list[float]] = {1: [], cores: []}
    for _ in range(rounds):
        for workers in times:
            t = time.perf_counter()
            assert check_parts(cache, True, workers) == []
            times[workers].append(time.perf_counter() - t)
    rows = [[f"this checkout, {w} process(es)", f"{1000 * min(v) / parts:.1f}-{1000 * max(v) / parts:.1f}"] for w, v in times.items()]
    if base:  # the commit before: 4 threads in one process, chunk by chunk (what its verify_cache did)
        code = (f"import sys, time; sys.path.insert(0, {os.path.abspath(base)!r})\n"
                "from concurrent.futures import ThreadPoolExecutor\nfrom store import Cache\nfrom store.verify import check_part\n"
                f"c = Cache({cache.path!r}); parts = c.parts[:{parts}]; t = time.perf_counter()\n"
                "with ThreadPoolExecutor(4) as pool:\n    assert not any(pool.map(lambda p: check_part(c, p, True), parts))\n"
                "print(time.perf_counter() - t)")
        runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=base).stdout.split()[-1])
                for _ in range(rounds)]
        rows.append(["base, 4 threads", f"{1000 * min(runs) / parts:.1f}-{1000 * max(runs) / parts:.1f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of LibriSpeech's 281,241 utterances")
    ap.add_argument("--keep", default=None, help="build (or reuse) the cache under this directory")
    ap.add_argument("--s3", action="store_true", help="also open it from a moto S3 server on loopback (uploads it: use --scale)")
    ap.add_argument("--rerun", action="store_true", help="time extract-features re-run over a full corpus tree instead")
    ap.add_argument("--base", default=None, help="with --rerun: also time this checkout of the code (git worktree)")
    ap.add_argument("--repeat", type=int, default=3, help="with --rerun: alternating runs of each checkout")
    ap.add_argument("--verify-parts", type=int, default=0, help="with --rerun: also time verify's check of this many parts")
    args = ap.parse_args()
    n = int(UTTERANCES * args.scale)
    root = args.keep or tempfile.mkdtemp(prefix="scale-")
    if args.rerun:
        if not os.path.exists(os.path.join(root, "caches")):
            t = time.perf_counter()
            tiny_teacher(os.path.join(root, "teacher"))
            build_extracted(root, build_corpus(root, n), os.path.join(root, "teacher"))
            print(f"corpus and cache of {n} files built in {time.perf_counter() - t:.0f} s")
        print(table(["extract-features, nothing to do (fresh process)", "seconds (range)", "minus teacher load",
                     "peak RSS MB (range)", "minus teacher load"], rerun_rows(root, args.base, args.repeat)))
        if args.verify_parts:
            print(table([f"verify, every crc32c, {args.verify_parts} parts of ~1,900 chunks", "ms per part (range)"],
                        verify_rows(root, args.verify_parts, args.base)))
        return

    existing = [d for d in os.listdir(root) if not d.startswith(".")] if os.path.isdir(root) else []
    t = time.perf_counter()
    path = os.path.join(root, existing[0]) if existing else build(root, n)
    parts = len(os.listdir(os.path.join(path, "commits")))
    print(f"cache: {parts * PER_PART} utterances in {parts} parts, built in {time.perf_counter() - t:.0f} s")
    base = {imp: measure(path, f"import {imp}") for imp in ("store", "store, train.data")}
    rows = []
    for name, snippet in SNIPPETS.items():
        imp = "store, train.data" if "train" in snippet else "store"
        seconds, rss = measure(path, f"import {imp}\n" + snippet)
        rows.append([name, f"{seconds:.2f}", f"{seconds - base[imp][0]:.2f}", f"{rss:.0f}", f"{rss - base[imp][1]:.0f}"])
    print(table(["command (fresh process, local disk)", "seconds", "minus imports", "peak RSS MB", "minus imports"], rows))
    full = float(rows[4][2]) - float(rows[0][2])
    print(f"imports alone: store {base['store'][0]:.2f} s / {base['store'][1]:.0f} MB; with torch (train.data) "
          f"{base['store, train.data'][0]:.2f} s / {base['store, train.data'][1]:.0f} MB")
    print(f"verify's overhead per part (every crc32c, minus open): {1000 * full / parts:.2f} ms")
    if args.s3:
        print(table(["on S3 (moto, loopback; fresh process)", "seconds", "requests", "peak RSS MB"], s3_rows(path)))
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
