"""Extraction: corpus discovery, decoding, the teacher's exact batched forward, and the pipeline that fills a cache."""

from extract.corpus import BadFile, Utterance, scan
from extract.errors import ExtractError
from extract.run import ExtractConfig, Summary, extract_features


def __getattr__(name: str):
    """Teacher and load_teacher on first use: they import torch, which a re-run with nothing to do never needs."""
    if name in ("Teacher", "load_teacher"):
        from extract import teacher

        return getattr(teacher, name)
    raise AttributeError(f"module 'extract' has no attribute {name!r}")

__all__ = ["BadFile", "ExtractConfig", "ExtractError", "Summary", "Teacher", "Utterance", "extract_features", "load_teacher", "scan"]
