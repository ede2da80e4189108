"""Protocol settings from text (``--param``): typed by the constructor, errors that help."""

from __future__ import annotations

import re

import pytest

from featkit.errors import FeatkitError
from featkit.protocols import Protocol
from featkit.protocols.params import ParamInfo, parameters, parse_param, parse_value


def test_values_take_the_constructor_types() -> None:
    assert parse_param("knn.k=10, 20") == ("knn", "k", [10, 20])
    assert parse_param("knn.temperature=0.07") == ("knn", "temperature", [0.07])
    assert parse_param("logistic.c=none,0.5,2") == ("logistic", "c", [None, 0.5, 2.0])
    assert parse_param("logistic.standardize=false") == ("logistic", "standardize", [False])
    assert parse_param("balanced.base=knn,logistic") == ("balanced", "base", ["knn", "logistic"])
    assert type(parse_param("logistic.c=2")[2][0]) is float


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("knn.k=ten", "--param knn.k: expected int, got 'ten'"),
        ("knn.k=", "--param knn.k: expected at least one value"),
        ("knn=3", "expected PROTOCOL.SETTING=VALUE"),
        ("knn.tempreature=1", "got 'tempreature' (did you mean knn.temperature?)"),
        ("knnn.k=3", "--param knnn.k: protocol: expected one of"),
        ("balanced.base_params=1", "got one set from Python only"),
        ("logistic.c=many", "expected float | None, got 'many'"),
    ],
)
def test_bad_text_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(FeatkitError, match=re.escape(message)):
        parse_param(text)


def test_unannotated_settings_take_their_default_type() -> None:
    class Loose(Protocol):
        def __init__(self, width=3, label="a", extra=None) -> None:  # type: ignore[no-untyped-def]
            self.width, self.label, self.extra = width, label, extra

    infos = {p.name: p for p in parameters(Loose)}
    assert infos["width"].types == (int,) and infos["label"].types == (str,)
    assert infos["extra"].types == (type(None),)
    assert parse_value("x", infos["width"], "7") == 7
    assert ParamInfo("n", (type(None), int), None).type_text() == "int | None"
