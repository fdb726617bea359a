import pytest

from extract import ExtractConfig, extract_features
from tests.conftest import build_corpus


@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_teacher):
    """A corpus and its cache of layers 1 and 3 from the tiny teacher, fp32 storage for exact comparisons."""
    root = tmp_path_factory.mktemp("train")
    corpus = build_corpus(str(root / "corpus"), n=8, seed=1)
    s = extract_features(ExtractConfig(tiny_teacher, corpus, layers=(1, 3), cache_dir=str(root / "caches"),
                                       storage_dtype="float32", progress=False))
    return {"corpus": corpus, "cache_dir": str(root / "caches"), "path": s.path, "teacher": tiny_teacher, "root": root}
