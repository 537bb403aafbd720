"""``where=`` filters: checked field names, every operator, values always bound parameters."""

from __future__ import annotations

import sqlite3

import pytest

from embeddable_db import InvalidInputError
from embeddable_db.filters import UnknownFieldError, compile_where, parse_where_option

ROWS = [
    (1, "alpha", 3, 0.5, None),
    (2, "beta", 7, 1.5, "x"),
    (3, "gamma bot", 7, 2.5, "y"),
    (4, "robot", 10, None, "x"),
]
COLUMNS = {"name": '"name"', "score": '"score"', "ratio": '"ratio"', "tag": '"tag"'}


@pytest.fixture
def conn():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score INTEGER, ratio REAL, tag TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", ROWS)
    return conn


def matching(conn, where) -> list[int]:
    sql, params = compile_where(where, COLUMNS, "Row")
    return [i for (i,) in conn.execute(f"SELECT id FROM t WHERE {sql} ORDER BY id", params)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (None, [1, 2, 3, 4]),
        ({}, [1, 2, 3, 4]),
        ({"score": 7}, [2, 3]),
        ({"score": ("!=", 7)}, [1, 4]),
        ({"score": ("<", 7)}, [1]),
        ({"score": ("<=", 7)}, [1, 2, 3]),
        ({"score": (">", 7)}, [4]),
        ({"score": (">=", 7)}, [2, 3, 4]),
        ({"name": ("in", ["alpha", "robot", "zeta"])}, [1, 4]),
        ({"name": ("in", [])}, []),
        ({"name": ("LIKE", "%bot%")}, [3, 4]),
        ({"tag": None}, [1]),
        ({"tag": ("!=", None)}, [2, 3, 4]),
        ({"score": 7, "tag": "x"}, [2]),
        ({"score": (">=", "7")}, [2, 3, 4]),  # text from a command line, compared as a number
    ],
)
def test_each_operator_selects_what_sql_would(conn, where, expected):
    assert matching(conn, where) == expected


def test_hostile_values_are_only_ever_parameters(conn):
    hostile = "x' OR 1=1; DROP TABLE t; --"
    assert matching(conn, {"name": hostile}) == []
    assert matching(conn, {"name": ("like", hostile)}) == []
    sql, params = compile_where({"name": hostile}, COLUMNS, "Row")
    assert hostile not in sql and params == [hostile]
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 4


def test_an_unknown_field_is_a_value_error_naming_the_valid_ones():
    with pytest.raises(UnknownFieldError) as caught:
        compile_where({"name; DROP TABLE t": 1}, COLUMNS, "Row")
    assert isinstance(caught.value, ValueError)
    assert "Row has no field" in str(caught.value)
    assert "name, ratio, score, tag" in str(caught.value)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("score=7", "where must be a dict"),
        ({"score": ("~", 7)}, "operator"),
        ({"score": ("=", 7, 8)}, "operator"),
        ({"score": ("<", None)}, "None compares only"),
        ({"score": ("in", "abc")}, "'in' takes a list"),
        ({"name": ("like", 3)}, "'like' takes a str"),
        ({"score": [1, 2]}, "compare with a str"),
        ({"score": ("in", [[1]])}, "compare with a str"),
    ],
)
def test_bad_filters_say_what_to_write(where, message):
    with pytest.raises(InvalidInputError, match=message):
        compile_where(where, COLUMNS, "Row")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("status=open", ("status", ("=", "open"))),
        ("score>=3", ("score", (">=", "3"))),
        ("score<=3", ("score", ("<=", "3"))),
        ("score<3", ("score", ("<", "3"))),
        ("score>3", ("score", (">", "3"))),
        ("tag!=x", ("tag", ("!=", "x"))),
        ("name~%bot%", ("name", ("like", "%bot%"))),
        ("note=a>=b", ("note", ("=", "a>=b"))),  # the first operator splits
        (" name = two words ", ("name", ("=", " two words "))),
    ],
)
def test_command_line_forms(text, parsed):
    assert parse_where_option(text) == parsed


@pytest.mark.parametrize("text", ["status", "=open", "  >=3", ""])
def test_a_command_line_filter_without_a_field_or_operator_is_refused(text):
    with pytest.raises(InvalidInputError, match="FIELD=VALUE"):
        parse_where_option(text)
