"""The MRN grammar and FHIR search escaping."""

from __future__ import annotations

import pytest

from tasks.patients.mrn import InvalidMrn, checked_mrn, fhir_escape, fhir_token, is_mrn


@pytest.mark.parametrize("mrn", ["A-000123", "NN.2024.17", "x", "7", "a_b-c.d", "Z" * 64])
def test_hospital_mrns_are_mrns(mrn: str) -> None:
    assert is_mrn(mrn) and checked_mrn(mrn) == mrn


@pytest.mark.parametrize(
    "value",
    ["", "-A1", ".A1", "A,B", "A|B", "A$B", "A\\B", "A B", "A/B", "A%2C", "Ä1", "Z" * 65, "A\n"],
)
def test_anything_else_is_refused_with_the_grammar(value: str) -> None:
    assert not is_mrn(value)
    with pytest.raises(InvalidMrn, match="letters, digits"):
        checked_mrn(value)


def test_fhir_search_syntax_is_escaped() -> None:
    assert fhir_escape("a,b|c$d\\e") == "a\\,b\\|c\\$d\\\\e"
    assert fhir_token("urn:neuronova:mrn", "A,1") == "urn:neuronova:mrn|A\\,1"
    assert fhir_token("urn:neuronova:mrn", "A-1") == "urn:neuronova:mrn|A-1"
