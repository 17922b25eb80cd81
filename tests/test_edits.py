"""The pure edit functions: Letta's semantics and wording, checked by example and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstore import InvalidInputError, InvalidInsertLineError, LimitExceededError, ReplaceError, edits

texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200)
lines_text = st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n"),
                              max_size=20), max_size=12).map("\n".join)


def test_insert_appends_at_end_by_default() -> None:
    assert edits.memory_insert("a\nb", "c") == "a\nb\nc"


def test_insert_at_zero_puts_text_on_top() -> None:
    assert edits.memory_insert("a\nb", "top", 0) == "top\na\nb"


def test_insert_after_line_n() -> None:
    assert edits.memory_insert("a\nb\nc", "x", 1) == "a\nx\nb\nc"


def test_insert_into_empty_block_has_no_blank_line() -> None:
    assert edits.memory_insert("", "first") == "first"


@pytest.mark.parametrize("line", [-2, 3, 100, True, "1", 1.0])
def test_insert_rejects_line_outside_the_block(line: object) -> None:
    with pytest.raises(InvalidInsertLineError) as err:
        edits.memory_insert("a\nb", "x", line)  # type: ignore[arg-type]
    assert str(err.value) == (
        f"Invalid `insert_line` parameter: {line}. It should be within the range of lines of the memory "
        "block: [0, 2], or -1 to append to the end of the memory block."
    )


def test_replace_changes_the_single_occurrence() -> None:
    assert edits.memory_replace("hello world", "world", "there", "x") == "hello there"


def test_replace_fails_when_old_text_is_missing() -> None:
    with pytest.raises(ReplaceError) as err:
        edits.memory_replace("hello", "bye", "x", "human")
    assert str(err.value) == (
        "No replacement was performed, old_str `bye` did not appear verbatim in memory block with label `human`."
    )


def test_replace_fails_when_old_text_occurs_twice_and_lists_lines() -> None:
    with pytest.raises(ReplaceError) as err:
        edits.memory_replace("cat\ndog\ncat", "cat", "x", "human")
    assert str(err.value) == (
        "No replacement was performed. Multiple occurrences of old_str `cat` in lines [1, 3]. "
        "Please ensure it is unique."
    )


def test_replace_refuses_empty_old_text() -> None:
    with pytest.raises(InvalidInputError):
        edits.memory_replace("abc", "", "x", "human")


def test_rethink_overwrites() -> None:
    assert edits.memory_rethink("old", "new") == "new"


def test_core_memory_append_adds_a_line() -> None:
    assert edits.core_memory_append("a", "b") == "a\nb"
    assert edits.core_memory_append("", "b") == "b"


def test_core_memory_replace_replaces_every_occurrence() -> None:
    assert edits.core_memory_replace("a-a-a", "a", "b", "x") == "b-b-b"
    with pytest.raises(ReplaceError, match="Old content 'z' not found in memory block 'x'"):
        edits.core_memory_replace("abc", "z", "y", "x")


def test_limit_error_uses_letta_wording() -> None:
    with pytest.raises(LimitExceededError) as err:
        edits.check_limit("org", "x" * 11, 10)
    assert str(err.value).startswith("Edit failed: Exceeds 10 character limit (requested 11)")


@given(value=lines_text, new=texts, data=st.data())
def test_insert_keeps_every_existing_line(value: str, new: str, data: st.DataObject) -> None:
    old_lines = value.split("\n") if value else []
    line = data.draw(st.sampled_from([-1, *range(len(old_lines) + 1)]))
    result = edits.memory_insert(value, new, line).split("\n")
    at = len(old_lines) if line == -1 else line
    added = new.split("\n")
    assert result[:at] == old_lines[:at]
    assert result[at : at + len(added)] == added
    assert result[at + len(added) :] == old_lines[at:]


@given(value=texts, old=texts.filter(bool), new=texts)
def test_replace_changes_exactly_one_occurrence_or_nothing(value: str, old: str, new: str) -> None:
    occurrences = len(edits.occurrence_lines(value, old))
    try:
        result = edits.memory_replace(value, old, new, "x")
    except ReplaceError:
        assert occurrences != 1
        return
    assert occurrences == 1
    at = value.find(old)
    assert result == value[:at] + new + value[at + len(old) :]


@given(value=texts, limit=st.integers(min_value=1, max_value=300))
def test_limit_holds_for_any_value(value: str, limit: int) -> None:
    if len(value) > limit:
        with pytest.raises(LimitExceededError):
            edits.check_limit("x", value, limit)
    else:
        edits.check_limit("x", value, limit)

