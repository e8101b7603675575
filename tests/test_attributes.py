import numpy as np
import pytest

from llm.attributes import DEFAULT_ATTRIBUTES, attributes_for, normalize, parse_scores, raw_scores, score_schema

NAMES = ["humor", "romance"]


def test_every_domain_has_twelve_attributes_and_a_bounded_schema():
    for domain, names in DEFAULT_ATTRIBUTES.items():
        assert len(names) == 12 == len(set(names)), domain
    schema = score_schema(NAMES)
    assert schema["required"] == NAMES and schema["properties"]["humor"]["enum"] == list(range(1, 11))
    assert attributes_for("unknown-domain") == DEFAULT_ATTRIBUTES["product"]
    with pytest.raises(ValueError, match="unique"):
        attributes_for("movie", ["a", "a"])


@pytest.mark.parametrize("text, reason", [
    ('{"humor": 3, "romance": 9}', None),
    ('{"humor": 3, "romance": 9', "not JSON"),
    ('[3, 9]', "not a JSON object"),
    ('{"humor": 3}', "missing attributes"),
    ('{"humor": 11, "romance": 2}', "not an integer from 1 to 10"),
    ('{"humor": true, "romance": 2}', "not an integer from 1 to 10"),
    ('{"humor": 2.5, "romance": 2}', "not an integer from 1 to 10"),
])
def test_parse_scores_validates(text, reason):
    scores, why = parse_scores(text, NAMES)
    if reason is None:
        assert scores == [3.0, 9.0] and why is None
    else:
        assert scores is None and reason in why


def test_normalize_is_a_z_score_that_keeps_failures_null():
    raw = raw_scores([[1, 10], None, [3, 10], [5, 10]], 2)
    z, mean, std = normalize(raw)
    assert mean == [3.0, 10.0] and np.isnan(z[1]).all()
    assert np.allclose(z[[0, 2, 3], 0], [-1.2247, 0, 1.2247], atol=1e-4)
    assert np.allclose(z[[0, 2, 3], 1], 0), "a constant attribute does not divide by zero"
