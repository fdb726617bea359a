"""How a cache keeps an utterance's audio (--audio): float32 or int16 arrays beside the targets, one FLAC file per
utterance, or none (the source files are read back, verified). The writer, the reader and verify consult this module."""

from __future__ import annotations

import numpy as np

AUDIO_MODES = ("float32", "int16", "flac", "none")


FLAC_DIR = "audio_flac"  # flac: one PCM_16 FLAC file per utterance in the part, <index in the part>.flac


def encode_audio(wave: np.ndarray, mode: str) -> tuple[np.ndarray | None, int]:
    """(stored samples, how many were clipped). int16 scales by 32768: bit-exact for 16-bit sources."""
    if mode == "float32":
        return np.ascontiguousarray(wave, np.float32), 0
    if mode in ("int16", "flac"):
        scaled = np.rint(np.asarray(wave, np.float64) * 32768)
        clipped = int(((scaled > 32767) | (scaled < -32768)).sum())
        return np.clip(scaled, -32768, 32767).astype(np.int16), clipped
    return None, 0


def decode_audio(stored: np.ndarray, mode: str) -> np.ndarray:
    return stored if mode == "float32" else stored.astype(np.float32) / 32768


def flac_bytes(codes: np.ndarray, rate: int) -> bytes:
    """int16 samples as a FLAC file (lossless: decoding gives the same int16 back). soundfile only when asked."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, codes, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def read_flac(f, start: int, stop: int) -> np.ndarray:
    """Samples start:stop of a FLAC file object as int16 (FLAC seeks: a crop decodes only what it needs)."""
    import soundfile as sf

    with sf.SoundFile(f) as snd:
        snd.seek(start)
        return snd.read(stop - start, dtype="int16")
