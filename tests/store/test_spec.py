import copy

import pytest

from store import SpecMismatchError, check_compatible, find_cache, fingerprint
from store.registry import closest_refusal
from tests.conftest import make_spec


def _set(spec, dotted, value):
    d = spec
    *head, last = dotted.split(".")
    for k in head:
        d = d[k]
    d[last] = value
    return spec


@pytest.mark.parametrize("field,value", [
    ("teacher.digest", "sha256:other"),  # any weight change changes the digest
    ("teacher.config.hidden_size", 32),
    ("layers", [1, 2]),
    ("compute_dtype", "bfloat16"),
    ("storage_dtype", "float32"),
    ("preprocessing.sample_rate", 8000),
    ("preprocessing.resampler", "soxr-VHQ"),
    ("preprocessing.normalize", True),
    ("format_version", 99),
])
def test_fingerprint_changes_with_every_field(field, value):
    base = make_spec()
    assert fingerprint(_set(copy.deepcopy(base), field, value)) != fingerprint(base)


def test_fingerprint_ignores_provenance_and_key_order():
    base = make_spec()
    other = dict(reversed(list(make_spec(provenance={"teacher": "elsewhere"}).items())))
    assert fingerprint(other) == fingerprint(base)


def test_unhashable_values_raise():
    with pytest.raises(TypeError, match="cannot hash"):
        fingerprint(make_spec(extra=object()))


def test_layer_subset_matches_and_other_mismatches_say_what_differs(tmp_path):
    from store import create_cache

    create_cache(str(tmp_path), make_spec())
    assert find_cache(make_spec(layers=[1, 3]), str(tmp_path)) is not None
    check_compatible(make_spec(), make_spec(layers=[2]))
    with pytest.raises(SpecMismatchError, match="layers 9 are not cached"):
        check_compatible(make_spec(), make_spec(layers=[1, 9]))
    with pytest.raises(SpecMismatchError, match="compute_dtype: cache has \"float32\", asked \"bfloat16\""):
        check_compatible(make_spec(), make_spec(compute_dtype="bfloat16"))
    assert find_cache(make_spec(compute_dtype="bfloat16"), str(tmp_path)) is None
    assert "compute_dtype" in closest_refusal(make_spec(compute_dtype="bfloat16"), str(tmp_path))
