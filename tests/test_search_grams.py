"""Character bigrams for substring search (pure functions), and the bounded fallback's 503."""

from __future__ import annotations

import pytest
from pymongo.errors import ExecutionTimeout

from complaints_shared.auth import Principal
from complaints_shared.problems import ProblemError
from intake import grams, search


def test_grams_are_the_two_character_windows_of_every_searchable_text() -> None:
    document = {
        "subject": "断网",
        "description": "经常断网",
        "reference": "LZ-1",
        "customer_keys": ["phone:139"],
    }
    assert grams.document_grams(document) == sorted(
        {"断网", "经常", "常断", "lz", "z-", "-1", "13", "39"}
    )


def test_a_query_is_looked_up_by_one_gram_and_verified_whole() -> None:
    assert grams.lookup_gram("断") is None
    assert grams.lookup_gram("断网") == "断网"
    assert grams.lookup_gram("经常断网") == "断网"
    assert grams.lookup_gram("ＶＩＰ") == "ip"  # full-width folded, case folded
    document = {"subject": "网速很快，不是很慢", "description": ""}
    assert grams.lookup_gram("网速很慢") in grams.document_grams(document)
    assert not grams.matches(document, "网速很慢")
    assert grams.matches(document, "不是很")


class _TimingOutCursor:
    def max_time_ms(self, _ms: int) -> _TimingOutCursor:
        return self

    def sort(self, _keys: list) -> _TimingOutCursor:
        return self

    def limit(self, _n: int) -> _TimingOutCursor:
        return self

    async def to_list(self, _length: int | None) -> list:
        raise ExecutionTimeout("operation exceeded time limit", 50)


class _Collection:
    def find(self, *_args: object, **_kwargs: object) -> _TimingOutCursor:
        return _TimingOutCursor()


async def test_a_one_character_search_past_its_time_limit_is_a_503_naming_q() -> None:
    db = {"complaints": _Collection()}
    principal = Principal(subject="u", org="demo", branches="*")
    with pytest.raises(ProblemError) as raised:
        await search.search(db=db, principal=principal, filters=search.ComplaintFilters(q="断"))
    problem = raised.value
    assert problem.status == 503
    assert int(problem.headers["Retry-After"]) > 0
    assert problem.extensions["errors"][0]["field"] == "q"
