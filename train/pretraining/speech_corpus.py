"""Speech made on this machine, the one place that makes it: the labelled espeak-ng corpora the teacher made here
learns from and the probes score on (make_corpus), make demo's sentences (demo_corpus), make probe-demo's keywords
(keyword_corpus), and numpy-made voiced audio for the benches (voiced_corpus).

No corpus can be downloaded here, so espeak-ng speaks random word sequences in many voices: each "speaker" is an
espeak voice (accent) with a voice variant (timbre), a base pitch and a base speed, jittered per utterance. Every
utterance comes with its labels, written as files `probe-features --labels` reads:
  speakers.tsv   id<TAB>speaker           (speaker identification, SUPERB's SID)
  phones.txt     id phone phone ...       (Kaldi text: phone recognition with CTC, SUPERB's PR; espeak's own phonemes)
  keywords.tsv   id<TAB>keyword           (keyword spotting, SUPERB's KS: one of ten words, or _unknown_)
  text.txt       id word word ...         (Kaldi text of the sentences: character recognition with CTC, CER)
Ids are the files' paths under the corpus root without extension, as extract-features names them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5")
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")  # SUPERB KS's ten words
WORDS = (
    "the a of to and in is it you that he was for on are as with his they at be this have from or one had by word but not "
    "what all were we when your can said there use an each which she do how their if will way about many then them write "
    "would like so these her long make thing see him two has look more day could come did number sound most people my "
    "over know water than call first who may down side been now find any new work part take get place made live where "
    "after back little only round man year came show every good me give our under name very through just form sentence "
    "great think say help low line differ turn cause much mean before move right boy old too same tell does set three want "
    "air well also play small end put home read hand port large spell add even land here must big high such follow act why "
    "ask men change went light kind need house picture try us again animal point mother world near build self earth father "
    "head stand own page should country found answer school grow study still learn plant cover food sun four between state "
    "keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late run while press "
    "close night real life few north open seem together next white children begin got walk example ease paper group always "
    "music those both mark often letter until mile river car feet care second book carry took science eat room friend began "
    "idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual young ready"
).split()


def espeak() -> str:
    """The espeak-ng binary, or a one-line refusal that says how to install it."""
    found = shutil.which("espeak-ng")
    if not found:
        raise SystemExit("espeak-ng is not installed: apt-get update && apt-get install -y espeak-ng (the corpus is its speech)")
    return found


def speakers(n: int, seed: int, exclude: tuple[str, ...] = ()) -> list[dict]:
    """n distinct speakers: accent x variant pairs in a fixed shuffled order, each with its own pitch and speed; voices
    in `exclude` (another corpus's, "accent+variant") are never used, so a probe's voices are truly new."""
    rng = np.random.default_rng(seed)
    pairs = [(a, v) for a in ACCENTS for v in VARIANTS]
    taken = set(exclude)
    order = [j for j in rng.permutation(len(pairs)) if f"{pairs[j][0]}+{pairs[j][1]}" not in taken][:n]
    if len(order) < n:
        raise SystemExit(f"{n} speakers asked, {len(order)} espeak voices left once {len(exclude)} are excluded")
    return [{"name": f"s{i:02d}", "voice": f"{pairs[j][0]}+{pairs[j][1]}", "pitch": int(rng.integers(25, 75)),
             "speed": int(rng.integers(130, 190))} for i, j in enumerate(order)]


def _say(binary: str, spk: dict, text: str, path: str, rng_seed: int) -> str:
    """Speak `text` as `spk` into `path`; returns espeak's phonemes of it (the PR labels), stress marks dropped."""
    rng = np.random.default_rng(rng_seed)
    pitch, speed = spk["pitch"] + int(rng.integers(-6, 7)), spk["speed"] + int(rng.integers(-12, 13))
    args = [binary, "-v", spk["voice"], "-p", str(pitch), "-s", str(speed)]
    subprocess.run([*args, "-w", path, text], check=True, capture_output=True)
    out = subprocess.run([*args, "-q", "-x", "--sep= ", text], check=True, capture_output=True, text=True).stdout
    tokens = (t.strip("',%=") for t in out.split())
    return " ".join(t for t in tokens if t and not t.startswith("_"))  # _: and _!: are pauses, not phones


def make_corpus(root: str, n_speakers: int, per_speaker: int, seed: int, keywords_per_speaker: int = 0,
                words: tuple[int, int] = (4, 12), exclude_voices: tuple[str, ...] = ()) -> dict:
    """Write the corpus (skipped when `root` holds a finished one with the same arguments). Returns its summary."""
    args = {"n_speakers": n_speakers, "per_speaker": per_speaker, "seed": seed, "keywords_per_speaker": keywords_per_speaker,
            "words": list(words), "version": 1}
    if exclude_voices:  # only then: corpora made before the option are still found made
        args["exclude_voices"] = sorted(exclude_voices)
    done = os.path.join(root, "corpus.json")
    if os.path.exists(done):
        try:
            with open(done) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            summary = None  # read back from disk: untrusted
        if isinstance(summary, dict) and summary.get("args") == args:
            return summary
        raise SystemExit(f"{root}: holds another corpus (or an unreadable corpus.json); remove it or choose another directory")
    binary = espeak()
    rng = np.random.default_rng(seed)
    jobs = []
    for spk in speakers(n_speakers, seed, tuple(exclude_voices)):
        os.makedirs(os.path.join(root, spk["name"]), exist_ok=True)
        for i in range(per_speaker):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(*words))))
            jobs.append((spk, f"{spk['name']}/u{i:04d}", text, None))
        for i in range(keywords_per_speaker):
            word = KEYWORDS[i % len(KEYWORDS)] if i % 11 != 10 else str(rng.choice(WORDS))  # one in eleven is another word
            jobs.append((spk, f"{spk['name']}/k{i:04d}", word, word if word in KEYWORDS else "_unknown_"))

    def one(job_index: int) -> str:
        spk, uid, text, _ = jobs[job_index]
        return _say(binary, spk, text, os.path.join(root, uid + ".wav"), seed * 1_000_003 + job_index)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        phones = list(pool.map(one, range(len(jobs))))
    with open(os.path.join(root, "speakers.tsv"), "w") as f:
        f.writelines(f"{uid}\t{spk['name']}\n" for spk, uid, _, _ in jobs)
    with open(os.path.join(root, "phones.txt"), "w") as f:
        f.writelines(f"{uid} {p}\n" for (_, uid, _, kw), p in zip(jobs, phones, strict=True) if kw is None and p)
    with open(os.path.join(root, "keywords.tsv"), "w") as f:
        f.writelines(f"{uid}\t{kw}\n" for _, uid, _, kw in jobs if kw is not None)
    import soundfile as sf

    seconds = sum(sf.info(os.path.join(root, uid + ".wav")).duration for _, uid, _, _ in jobs)
    with open(os.path.join(root, "text.txt"), "w") as f:  # the sentences' words: character CTC (CER), a second content task
        f.writelines(f"{uid} {text}\n" for _, uid, text, kw in jobs if kw is None)
    summary = {"args": args, "utterances": len(jobs), "hours": round(seconds / 3600, 3),
               "speakers": speakers(n_speakers, seed, tuple(exclude_voices))}
    with open(done, "w") as f:  # last: a corpus without it is unfinished and is made again
        json.dump(summary, f, indent=1)
    return summary


SENTENCES = [
    "the cache is written once and read many times", "a small student learns from a large teacher",
    "speech models are costly to train", "distillation keeps most of the quality", "every frame lasts twenty milliseconds",
    "the teacher runs only once over the corpus", "layers four eight and twelve are the targets",
    "random crops start at multiples of three hundred twenty samples", "resume after a crash and nothing is lost",
    "the student has two transformer layers", "a shared cache serves many experiments", "checksums find damaged chunks",
]


def demo_corpus(root: str, n: int = 48) -> str:
    """make demo's corpus: two of SENTENCES per utterance, spoken by espeak-ng when installed (22.05 kHz: exercises
    resampling), else voiced synthetic audio."""
    if os.path.isdir(root) and os.listdir(root):
        return "existing"
    import soundfile as sf

    espeak = shutil.which("espeak-ng")
    rng = np.random.default_rng(0)
    for i in range(n):
        spk, path = f"spk{i % 4}", os.path.join(root, f"spk{i % 4}", f"utt{i:03d}.wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = " ".join(rng.choice(SENTENCES, size=2, replace=False))
        if espeak:
            subprocess.run([espeak, "-v", ["en", "en-us", "en-gb", "en-sc"][i % 4], "-s", str(140 + 10 * (i % 5)), "-w", path, text],
                           check=True, capture_output=True)
        else:
            sr, dur = 16000, rng.uniform(1.5, 4.0)
            t = np.arange(int(sr * dur)) / sr
            f0 = 110 + 40 * int(spk[-1]) + 20 * np.sin(2 * np.pi * 0.7 * t)
            voiced = sum(np.sin(2 * np.pi * h * np.cumsum(f0) / sr) / h for h in range(1, 8))
            envelope = (np.sin(2 * np.pi * 3.5 * t) > -0.3) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.4 * t) ** 2)
            sf.write(path, (0.1 * voiced * envelope + 0.005 * rng.standard_normal(len(t))).astype(np.float32), sr)
    return "espeak-ng speech" if espeak else "numpy-made voiced audio (install espeak-ng for speech)"


def keyword_corpus(root: str) -> tuple[str, str]:
    """make probe-demo's task, SUPERB's keyword spotting in miniature: the ten words in four espeak voices at three
    rates (numpy-made word-like chirps without espeak-ng). Returns (labels TSV, what the audio is): VOICE/WORD-RATE.wav,
    label WORD."""
    import shutil as sh

    import numpy as np
    import soundfile as sf

    labels = os.path.join(os.path.dirname(root), "keywords.tsv")
    espeak = sh.which("espeak-ng")
    if not (os.path.isdir(root) and os.listdir(root)):
        rng = np.random.default_rng(0)
        for v, voice in enumerate(("en", "en-us", "en-gb", "en-sc")):
            os.makedirs(os.path.join(root, f"v{v}"), exist_ok=True)
            for w, word in enumerate(KEYWORDS):
                for rate in (130, 160, 190):
                    path = os.path.join(root, f"v{v}", f"{word}-{rate}.wav")
                    if espeak:
                        subprocess.run([espeak, "-v", voice, "-s", str(rate), "-w", path, word], check=True, capture_output=True)
                        continue
                    t = np.arange(int(16000 * 0.5 * 160 / rate)) / 16000  # a word: its own two-formant chirp, voice-shifted
                    f = (200 + 60 * w) * (1 + 0.1 * v) * (1 + 0.5 * t * (w % 3 - 1))
                    x = np.sin(2 * np.pi * np.cumsum(f) / 16000) + 0.5 * np.sin(2 * np.pi * np.cumsum(f * (2 + w % 4)) / 16000)
                    sf.write(path, (0.2 * x * np.hanning(len(t)) + 0.003 * rng.standard_normal(len(t))).astype(np.float32), 16000)
    with open(labels, "w") as f:
        for v in sorted(os.listdir(root)):
            for name in sorted(os.listdir(os.path.join(root, v))):
                f.write(f"{v}/{os.path.splitext(name)[0]}\t{name.split('-')[0]}\n")
    return labels, "espeak-ng speech" if espeak else "numpy-made chirps (install espeak-ng for speech)"


def voiced_corpus(root: str, n: int, seconds: tuple[float, float] = (2.0, 12.0), seed: int = 0) -> str:
    """n utterances of numpy-made voiced audio with LibriSpeech-like lengths: the benches' speech-shaped audio when only
    bytes and lengths matter (no espeak-ng needed)."""
    import numpy as np
    import soundfile as sf

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = os.path.join(root, f"s{i % 8}", f"u{i:05d}.flac")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sr, dur = 16000, rng.uniform(*seconds)
        t = np.arange(int(sr * dur)) / sr
        f0 = 100 + 15 * (i % 8) + 25 * np.sin(2 * np.pi * 0.5 * t)
        voiced = sum(np.sin(2 * np.pi * h * np.cumsum(f0) / sr) / h for h in range(1, 10))
        env = (np.sin(2 * np.pi * 4 * t + i) > -0.2) * (0.4 + 0.6 * np.sin(2 * np.pi * 0.3 * t) ** 2)
        sf.write(path, (0.08 * voiced * env + 0.003 * rng.standard_normal(len(t))).astype(np.float32), sr)
    return root
