"""Block files: byte-exact values, safe YAML, errors that name file and line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memstore import Block, FileFormatError, InvalidNameError, validate_name
from memstore.blockfile import block_from_file, render_block, with_body

any_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))


@given(value=any_text)
def test_any_unicode_value_round_trips_byte_exactly(value: str) -> None:
    block = Block(id="block-1", label="x", value=value, name="x", metadata={"k": value[:5]})
    data = render_block(block)
    assert block_from_file(data, "blocks/x.md", "x").value == value
    assert render_block(block_from_file(data, "blocks/x.md", "x")) == data


def test_metadata_ending_in_unicode_whitespace_keeps_it() -> None:
    block = Block(id="block-1", label="x", value="v", name="x", metadata={"k": "\xa0", "j": "a\u2003"})
    assert block_from_file(render_block(block), "blocks/x.md", "x").metadata == block.metadata


def test_file_ends_with_one_newline_not_part_of_the_value() -> None:
    data = render_block(Block(id="block-1", label="x", value="line", name="x"))
    assert data.endswith(b"---\nline\n")


def test_hand_written_file_with_bom_and_crlf_fences_parses() -> None:
    data = "\ufeff---\r\nid: block-1\r\nlabel: org\r\n---\r\nvalue".encode()
    assert block_from_file(data, "blocks/org.md", "org").value == "value"


def test_broken_yaml_names_file_and_line() -> None:
    data = b"---\nid: block-1\nlabel: org\nlimit: [1, 2\n---\nvalue\n"
    with pytest.raises(FileFormatError) as err:
        block_from_file(data, "blocks/org.md", "org")
    assert err.value.path == "blocks/org.md"
    assert err.value.line is not None and 4 <= err.value.line <= 5
    assert str(err.value).startswith("blocks/org.md, line")


def test_bad_field_names_its_line() -> None:
    data = b"---\nid: block-1\nlabel: org\nlimit: lots\n---\nv\n"
    with pytest.raises(FileFormatError, match=r"blocks/org.md, line 4: field 'limit' must be a positive whole number"):
        block_from_file(data, "blocks/org.md", "org")


def test_yaml_is_loaded_safely() -> None:
    data = b"---\nid: block-1\nlabel: org\nmetadata: !!python/object/apply:os.system ['echo hi']\n---\nv\n"
    with pytest.raises(FileFormatError, match="invalid YAML"):
        block_from_file(data, "blocks/org.md", "org")


def test_non_utf8_file_is_reported_with_its_line() -> None:
    data = b"---\nid: block-1\nlabel: org\n---\nok\n\xff\xfe\n"
    with pytest.raises(FileFormatError, match=r"line 6: not valid UTF-8"):
        block_from_file(data, "blocks/org.md", "org")


def test_missing_front_matter_is_reported() -> None:
    with pytest.raises(FileFormatError, match="line 1: missing front matter"):
        block_from_file(b"just text\n", "blocks/org.md", "org")


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "/etc", "\\x", "a\nb", "tab\there", "x" * 65,
                                  ".hidden", "-dash", "sp ace", "\x00", 5, None])
def test_bad_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


@pytest.mark.parametrize("name", ["organization", "human", "a", "x" * 64, "v1.2", "snake_case", "kebab-case", "_x"])
def test_good_names_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(("old", "front"), [
    ("---\nid: block-1\nlabel: x  # a comment\n---\nold\n", "---\nid: block-1\nlabel: x  # a comment\n---\n"),
    ("\ufeff---\r\nid: block-1\r\nlabel: x\r\n---\r\nold\r\n", "\ufeff---\r\nid: block-1\r\nlabel: x\r\n---\r\n"),
    ("---\nid: block-1\nlabel: x\n---", "---\nid: block-1\nlabel: x\n---\n"),  # the fence ends the file
])
def test_a_new_body_keeps_the_front_matter_byte_for_byte(old: str, front: str) -> None:
    data = with_body(old.encode(), "new\n value ", "blocks/x.md")
    assert data == (front + "new\n value \n").encode()
    assert block_from_file(data, "blocks/x.md", "x").value == "new\n value "
