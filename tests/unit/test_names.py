"""The upstream name rule: the shared vectors, then what the message says."""

import json
from pathlib import Path

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import (
    MAX_NAME_LENGTH, name_key, name_problem, validate_name)

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "names.json").read_text())["cases"]


@pytest.mark.parametrize("case", VECTORS, ids=lambda case: repr(case["name"])[:40])
def test_vector(case):
    assert (name_problem(case["name"]) is None) is case["valid"]
    if case["valid"]:
        assert validate_name(case["name"]) == case["name"]
        assert name_key(case["name"]) == case["key"]
    else:
        with pytest.raises(ValidationError) as caught:
            validate_name(case["name"])
        assert caught.value.value == case["name"]
        assert caught.value.rule_id == case["rule"]
        if "problem" in case:
            assert case["problem"] in str(caught.value)


def test_vectors_cover_the_names_the_issue_names():
    names = {case["name"]: case["valid"] for case in VECTORS}
    for bad in ("bad name", "x{y", ""):
        assert names.get(bad) is False, bad
    assert names.get("WebappReadonly_b") is True


@pytest.mark.parametrize("name, problem", [
    ("bad name", "contains whitespace"),
    ("x{y", "contains '{'"),
    ("x}y", "contains '}'"),
    ("a;b", "contains ';'"),
    ('a"b', "contains '\"'"),
    ("a'b", "contains \"'\""),
    ("a/b", "contains '/'"),
    ("a\tb", "contains whitespace"),
    ("a\x01b", "contains a control character (0x01)"),
    ("a\x7fb", "contains a control character (0x7f)"),
    ("-a", "starts with '-'"),
    (".a", "starts with '.'"),
    ("", "is empty"),
    ("é", "contains 'é'"),
    ("a" * (MAX_NAME_LENGTH + 1), f"is {MAX_NAME_LENGTH + 1} characters long, over the limit of {MAX_NAME_LENGTH}"),
    ("a" * 300, "is 300 characters long"),
    (None, "must be a string, not NoneType"),
    (12, "must be a string, not int"),
])
def test_problem_and_message(name, problem):
    assert problem in name_problem(name)
    with pytest.raises(ValidationError) as caught:
        validate_name(name)
    message = str(caught.value)
    assert message.startswith(f"invalid upstream name {name!r}: ")
    assert problem in message
    assert "1 to 128 characters from A-Z a-z 0-9 _ . -" in message  # the rule itself


def test_longest_valid_name():
    assert name_problem("a" * MAX_NAME_LENGTH) is None
