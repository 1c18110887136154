"""Texts: what counts as a word, and reading text files as UTF-8 lines.

One word rule serves the bag-of-words vocabulary, the preparers' count of empty texts and
the manifest reader's check, so a text is "empty" exactly when it would give no
bag-of-words token.
"""
from __future__ import annotations

import logging
import re
import string
import unicodedata
from pathlib import Path

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
# The text CLIP encodes for a sample whose text is empty (its bag-of-words row is all zero).
# DCHMT's make_nuswide.py gives tagless NUS-WIDE images this caption; any fixed string would
# do, since all empty-text samples then share one text embedding.
EMPTY_TEXT_PLACEHOLDER = "123456"
EMPTY_TEXT_RULE = ("no word in it holds a letter or digit (punctuation and symbols, e.g. "
                   "'---' or '###', are stripped from the ends of words and never form a word)")

_ASCII_EDGE = string.punctuation  # every ASCII punctuation mark and symbol
_ASCII_WORD = re.compile(r"[A-Za-z0-9]")


def _strip_edges(word: str) -> str:
    """Strip punctuation (Unicode P*) and symbols (S*) from both ends; inner ones stay, so
    "plant_life" and "new-york" remain one word while "#sunset" becomes "sunset"."""
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start])[0] in "PS":
        start += 1
    while end > start and unicodedata.category(word[end - 1])[0] in "PS":
        end -= 1
    return word[start:end]


def _is_word(word: str) -> bool:
    return any(unicodedata.category(c)[0] in "LN" for c in word)


def tokenize(text: str) -> list[str]:
    """The words of a text: lower-cased, split on whitespace, stripped of punctuation and
    symbols at both ends, kept when they hold at least one letter or digit (any script)."""
    words = []
    for word in text.lower().split():
        if word.isascii():  # the common case, without a per-character lookup
            word = word.strip(_ASCII_EDGE)
            keep = _ASCII_WORD.search(word) is not None
        else:
            word = _strip_edges(word)
            keep = _is_word(word)
        if keep:
            words.append(word)
    return words


def is_empty_text(text: str) -> bool:
    """True when the text gives no word (see EMPTY_TEXT_RULE)."""
    return not tokenize(text)


def read_lines(path: str | Path, *, strict: bool = True) -> list[str]:
    """The lines of a UTF-8 text file.

    Lines are split on "\\n" only (a trailing "\\r" is dropped), so U+2028 and the other
    separators `str.splitlines` knows stay inside their line. With `strict`, a byte-order
    mark or bytes that are not UTF-8 raise ValueError naming the file and line; without it
    (the official dataset files, which a user cannot fix) a BOM is skipped and bad bytes are
    read as U+FFFD with a warning naming the first such line.
    """
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(BOM):
        if strict:
            raise ValueError(f"{path}:1: the file starts with a UTF-8 byte-order mark (BOM); "
                             f"save it as UTF-8 without a BOM")
        data = data[len(BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        where = f"{path}:{line_no}: byte {data[e.start]:#04x} at column {column} is not UTF-8"
        if strict:
            raise ValueError(f"{where}; save the file as UTF-8") from None
        log.warning("%s; such bytes are read as U+FFFD", where)
        text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
