"""Extraction: corpus discovery, decoding, the teacher's exact batched forward, and the pipeline that fills a cache."""

from extract.corpus import BadFile, Utterance, scan
from extract.errors import ExtractError
from extract.run import ExtractConfig, Summary, extract_features
from extract.teacher import Teacher, load_teacher

__all__ = ["BadFile", "ExtractConfig", "ExtractError", "Summary", "Teacher", "Utterance", "extract_features", "load_teacher", "scan"]
