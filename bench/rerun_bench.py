"""`extract-features` with nothing to do, at LibriSpeech's full size: 281,241 files, 5,740 parts, every record real.

    python -m bench.rerun_bench --keep /tmp/rerun-full --base /tmp/base     # this checkout beside a `git worktree`

The corpus is LibriSpeech's tree of identical 0.105-s FLAC files (1,680 samples: 5 frames of a 320-hop teacher), the
teacher a 12-layer HuBERT 4 channels wide, so that the payload is tiny and only the metadata is full size: one part
written by PartWriter is copied per part, and each part's marker records its 49 real files (stat, sha256, header), as an
extraction would. The commit before format 3 reads format 2, so --base gets its own copy of the cache (hard links),
brought back to format 2 (records in sources.json) as that commit left it. Each run is a fresh process; wall time and
peak RSS, the checkouts alternating, beside a fresh process that only loads the teacher.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import time

from bench.common import table
from bench.scale_bench import PER_PART, UTTERANCES, build_corpus, measure

SAMPLES = 400 + 320 * 4  # 5 frames


def tiny_teacher(path: str) -> None:
    import torch
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=4, num_hidden_layers=12, num_attention_heads=1, intermediate_size=8, conv_dim=(4,) * 7,
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=False, sampling_rate=16000).save_pretrained(path)


def build(root: str, utterances: int) -> str:
    """The cache an extraction of the corpus would leave, metadata full size (see the module docstring)."""
    import numpy as np

    from extract.corpora import corpus_identity
    from extract.corpus import scan
    from extract.run import ExtractConfig, new_layout, spec_of
    from extract.teacher import load_teacher
    from store import PartWriter, create_cache
    from store.index import consolidate
    from store.layout import commit_path, part_name
    from store.source_files import source_record

    teacher_dir, caches = os.path.join(root, "teacher"), os.path.join(root, "caches")
    tiny_teacher(teacher_dir)
    corpus = build_corpus(root, utterances, SAMPLES)
    teacher = load_teacher(teacher_dir, None, "cpu", "float32")
    cfg = ExtractConfig(teacher=teacher_dir, corpus=corpus, cache_dir=caches, progress=False)
    spec = spec_of(cfg, teacher)
    provenance = {"teacher": teacher_dir, "revision": None, "corpus": corpus, "corpus_input": corpus_identity(corpus)}
    path = create_cache(caches, spec, provenance, new_layout(cfg, teacher))
    _, utts, _ = scan(corpus, 16000)
    utts = sorted(utts, key=lambda u: u.uid)[: len(utts) // PER_PART * PER_PART]
    digest = hashlib.sha256(open(utts[0].path, "rb").read()).hexdigest()
    wave = np.zeros(SAMPLES, np.float32)
    template = PartWriter(path, "p" + "0" * 16, spec["layers"], spec["dim"], "float16", new_layout(cfg, teacher))
    for u in utts[:PER_PART]:
        template.add(u.uid, {k: np.zeros((5, spec["dim"]), np.float32) for k in spec["layers"]}, wave)
    marker = template.commit()
    os.remove(commit_path(path, marker["part"]))
    later = time.time_ns() + 10**10  # read after every file was written: no record is racily clean
    for start in range(0, len(utts), PER_PART):
        chunk = utts[start : start + PER_PART]
        name = part_name([u.uid for u in chunk])
        d = f"{name}.000000000000"
        shutil.copytree(f"{path}/parts/{marker['dir']}", f"{path}/parts/{d}")
        sources = [source_record(u.path, os.stat(u.path), digest, None, (16000, SAMPLES, 1), later) for u in chunk]
        with open(commit_path(path, name), "w") as f:
            json.dump(dict(marker, part=name, dir=d, ids=[u.uid for u in chunk], sources=sources, corpus=provenance["corpus_input"]), f)
    shutil.rmtree(f"{path}/parts/{marker['dir']}")
    kept = {u.path for u in utts}
    for d, _, names in os.walk(corpus):  # the files that do not fill a part are not in the corpus: nothing left to do
        for n in names:
            if os.path.join(d, n) not in kept:
                os.remove(os.path.join(d, n))
    consolidate(path)
    return path


def as_format_2(path: str) -> None:
    """What the commit before format 3 left: the records in sources.json, zarr.json saying 2."""
    from store.index import read_sources
    from store.layout import legacy_sources_path, sources_path

    table = read_sources(path)
    with open(legacy_sources_path(path), "w") as f:
        json.dump({"parts": {p: table.entry(i) for i, p in enumerate(table.parts)}}, f, separators=(",", ":"))
    os.remove(sources_path(path))
    meta = json.load(open(f"{path}/zarr.json"))
    meta["attributes"]["distilcache"]["format_version"] = 2
    os.remove(f"{path}/zarr.json")  # a hard link to this checkout's copy: replaced, never written through
    json.dump(meta, open(f"{path}/zarr.json", "w"))


_RERUN = ("from extract.cli import main\ntry:\n    main(['--teacher', T, '--corpus', C, '--cache-dir', R, '--json'])\n"
          "except SystemExit as e:\n    assert not e.code, e.code\n")
_LOAD = "from extract.teacher import load_teacher\nload_teacher(T, None, 'cpu', 'float32')\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of LibriSpeech's 281,241 utterances")
    ap.add_argument("--keep", required=True, help="build (or reuse) the corpus and cache under this directory")
    ap.add_argument("--base", default=None, help="also time this checkout of the code (a git worktree of the commit before)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of each checkout")
    args = ap.parse_args()
    root = args.keep
    if not os.path.exists(os.path.join(root, "caches")):
        t = time.perf_counter()
        path = build(root, int(UTTERANCES * args.scale))
        print(f"corpus and cache built in {time.perf_counter() - t:.0f} s: {len(os.listdir(f'{path}/commits'))} parts")
    if args.base and not os.path.exists(os.path.join(root, "caches-base")):
        subprocess.run(["cp", "-al", os.path.join(root, "caches"), os.path.join(root, "caches-base")], check=True)
        base_caches = os.path.join(root, "caches-base")
        as_format_2(os.path.join(base_caches, next(n for n in os.listdir(base_caches) if not n.startswith("."))))
    teacher, corpus = os.path.join(root, "teacher"), os.path.join(root, "LibriSpeech", "train-960")
    where = {"this checkout": (os.getcwd(), "caches"), **({"base": (os.path.abspath(args.base), "caches-base")} if args.base else {})}
    runs: dict[str, list] = {k: [] for k in where}
    for _ in range(args.repeat):
        for label, (src, caches) in where.items():
            env = f"import sys; sys.path.insert(0, {src!r}); T, C, R = {teacher!r}, {corpus!r}, {os.path.join(root, caches)!r}\n"
            runs[label].append((measure("", env + _RERUN, cwd=src), measure("", env + _LOAD, cwd=src)))
    rows = []
    for label, r in runs.items():
        secs, rss = sorted(x[0][0] for x in r), sorted(x[0][1] for x in r)
        rest = sorted(x[0][0] - x[1][0] for x in r)
        rows.append([label, f"{secs[0]:.1f}-{secs[-1]:.1f}", f"{rest[0]:.1f}-{rest[-1]:.1f}", f"{rss[0]:.0f}-{rss[-1]:.0f}",
                     f"{min(x[1][0] for x in r):.1f}"])
    print(table(["extract-features, nothing to do (fresh process)", "seconds (range)", "minus teacher load (range, paired)",
                 "peak RSS MB (range)", "teacher load alone s"], rows))


if __name__ == "__main__":
    main()
