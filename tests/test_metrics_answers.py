"""clean_answer (LEO rules, spec §6.7), normalize_prediction, answer_match and object-id parsing."""

import pytest

from fast3d_cli.metrics import (
    answer_match,
    clean_answer,
    normalize_prediction,
    parse_object_ids,
    valid_object_ids,
)


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("Brown Chair", "brown chair"),  # lowercase
        ("   brown  ", "brown"),  # strip spaces
        ("brown    wooden   chair", "brown wooden chair"),  # collapse spaces
        ("left.  right", "left right"),  # ". " normalisation, then "." deleted
        ('chair!?;()"[]/&', "chair"),  # punctuation outside [a-z0-9,'\s-:] deleted
        ("it's black-ish, 3:30", "it's black-ish, three:30"),  # kept: ' , - :
        ("façade’s", "faades"),  # ç and ’ are deleted before their (no-op) rules
        ("letf", "left"),
        ("let", "left"),
        ("to the letf of tehre", "to left of there"),
        ("rigth", "right"),
        ("rght", "right"),
        ("behine", "behind"),
        ("tv", "TV"),
        ("TV stand", "TV stand"),
        ("chai", "chair"),
        ("chain", "chain"),  # whole words only
        ("wasing machine", "washing machine"),
        ("waslked", "walked"),
        ("3 oclock", "three o'clock"),
        ("3 o'  clock", "three o'clock"),
        ("0", "zero"),
        ("none", "zero"),
        ("nonexistent", "nonexistent"),
        ("1 2 3 4 5 6 7 8 9 10", "one two three four five six seven eight nine ten"),
        ("11 12 13 14 15", "eleven twelve thirteen fourteen fifteen"),
        ("16 17 18 19 20", "sixteen seventeen eighteen nineteen twenty"),
        ("23", "twenty-three"),
        ("21", "21"),
        ("22 chairs", "22 chairs"),
        ("100", "100"),
        ("mat2", "mat"),
        ("no1", "no"),
        ("b12", "b12"),  # only one glued digit
        ("a chair", "chair"),
        ("an apple", "apple"),
        ("the table", "table"),
        ("the 21", "the 21"),  # article kept before a non-letter word
        ("the 2", "two"),  # ... but numbers become words first
        ("a", "a"),
        ("banana", "banana"),
        ("backwards", "backward"),
        ("walk backwardsly", "walk backwardsly"),
        ("", ""),
    ],
)
def test_clean_answer_rules(raw, cleaned):
    assert clean_answer(raw) == cleaned


def test_clean_answer_rule_order():
    assert clean_answer("The TV!") == "TV"  # "tv" -> "TV" happens after lowercasing
    assert clean_answer("the none") == "zero"  # numbers before articles
    assert clean_answer("a mat2") == "mat"  # glued digit before articles


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two.", "two"),
        ("Chair", "chair"),
        ("TV.", "TV"),
        ("A", "a"),  # length 1: untouched, then cleaned (lowercased)
        (".", ""),  # length 1: the dot is not stripped but deleted by clean_answer
        ("Left..", "left"),  # one dot stripped, the other deleted
        ("", ""),
    ],
)
def test_normalize_prediction(raw, expected):
    assert normalize_prediction(raw) == expected


def test_answer_match_outcomes():
    assert answer_match("", ["", "chair"]) == (0, 0)  # empty prediction
    assert answer_match("chair", ["table", "chair"]) == (1, 1)
    assert answer_match("brown chair", ["chair"]) == (0, 1)  # ref inside pred
    assert answer_match("chair", ["brown chair"]) == (0, 1)  # pred inside ref
    assert answer_match("washingmachine", ["washing machine"]) == (0, 1)  # whitespace ignored
    assert answer_match("table", ["chair", "sofa"]) == (0, 0)
    assert answer_match("table", []) == (0, 0)
    assert answer_match("TV", ["tv"]) == (0, 0)  # case matters


def test_parse_object_ids():
    text = "<OBJ012>, <OBJ005> and <OBJ012>; not <OBJ1> nor <OBJ1234> nor <obj003>"
    assert parse_object_ids(text) == [12, 5, 12]  # exactly three digits, upper case
    assert parse_object_ids("nothing") == []
    assert valid_object_ids("<OBJ099> <OBJ100> <OBJ003> <OBJ003>", 100) == [99, 3, 3]
