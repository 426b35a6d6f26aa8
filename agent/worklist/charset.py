"""Specific Character Set decisions for worklist values and the images made from them (pure).

- A worklist response's values are kept as encoded; its character set is checked against
  them: a set that is missing, unknown or that the values do not decode in is replaced by the
  best guess (UTF-8 when every value decodes as UTF-8, else ISO 2022 IR 87 when ISO 2022 JIS
  escapes are seen, else ISO_IR 100, which decodes any byte), with a note saying so.
- Our own text (equipment from the config, operator, series description) goes into images
  whose character set is the worklist's: a character that set cannot hold is written as "?"
  (`fit`). When the worklist gave the default repertoire (no Specific Character Set), the
  images say ISO_IR 192 instead whenever our text needs it: ASCII bytes are the same in UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydicom.charset import convert_encodings, decode_bytes, python_encoding
from pydicom.valuerep import TEXT_VR_DELIMS, PersonName

UTF8 = ("ISO_IR 192",)
LATIN1 = ("ISO_IR 100",)
JAPANESE = ("", "ISO 2022 IR 87")
_JIS_ESCAPES = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b)I")
# the terms whose Python codec is wider than what DICOM lets them hold
_ASCII_TERMS = {"", "ISO_IR 6", "ISO 2022 IR 6"}
_JIS_X_0201 = {"ISO_IR 13", "ISO 2022 IR 13"}
# where the byte 0x5C is always the backslash that separates values (single-byte sets, UTF-8)
_SINGLE_BYTE = ("100", "101", "109", "110", "126", "127", "138", "144", "148", "166")
SPLIT_SAFE = (
    {"ISO_IR 192"}
    | _ASCII_TERMS
    | {f"{prefix}{n}" for prefix in ("ISO_IR ", "ISO 2022 IR ") for n in _SINGLE_BYTE}
)


def terms_of(raw: bytes | None) -> tuple[str, ...]:
    """The Specific Character Set value (bytes as received) as its terms; () when absent."""
    if not raw:
        return ()
    text = raw.decode("ascii", errors="replace").rstrip(" \x00")
    if not text.strip():
        return ()
    return tuple(t.strip() for t in text.split("\\"))


def known(terms: Sequence[str]) -> bool:
    return all(t in python_encoding for t in terms)


def _codecs(terms: Sequence[str]) -> list[str]:
    return convert_encodings(list(terms) or [""])


def decode_text(value: bytes, terms: Sequence[str], vr: str) -> str | None:
    """`value` decoded in `terms`, or None when it does not decode there (or a term is not
    known). Trailing padding is removed; PN values are decoded group by group."""
    if not known(terms):
        return None
    try:
        if vr == "PN":
            text = str(PersonName(value, encodings=_codecs(terms)))
        else:
            text = decode_bytes(value, _codecs(terms), TEXT_VR_DELIMS)
    except (UnicodeError, ValueError, LookupError):
        return None
    if "\ufffd" in text:  # pydicom replaced what did not decode
        return None
    default_only = not terms or (terms[0] in _ASCII_TERMS and not any(terms[1:]))
    if default_only and any(b >= 0x80 or b == 0x1B for b in value):  # the default: ASCII
        return None
    return text.rstrip(" \x00")


def decide(
    declared: tuple[str, ...], values: Iterable[tuple[bytes, str]]
) -> tuple[tuple[str, ...], str | None]:
    """The character set the values are read in and the images declare, and a note when it is
    not the declared one. `values` are (bytes, VR) of every text value of the item."""
    values = [(v, vr) for v, vr in values if v]
    if known(declared) and all(decode_text(v, declared, vr) is not None for v, vr in values):
        return declared, None
    what = f"declared {_show(declared)!r}" if declared else "no Specific Character Set"
    if all(b < 0x80 and b != 0x1B for v, _ in values for b in v):  # ASCII: the default set
        return (), f"{what} does not fit; the values are ASCII, read as the default set"
    for guess in (JAPANESE, UTF8, LATIN1):
        if guess == JAPANESE and not any(e in v for v, _ in values for e in _JIS_ESCAPES):
            continue
        if all(decode_text(v, guess, vr) is not None for v, vr in values):
            return guess, f"{what} does not fit the values; read as {_show(guess)}"
    return LATIN1, f"{what} does not fit the values; read as ISO_IR 100"


def _show(terms: Sequence[str]) -> str:
    return "\\".join(terms)


def can_hold(ch: str, terms: Sequence[str]) -> bool:
    """Whether a character can be written in `terms` (any of its character sets)."""
    if ch.isascii():
        return not (terms and terms[0] in _JIS_X_0201 and ch in "\\~")
    for term in terms or ("",):
        if term in _ASCII_TERMS:
            continue
        if term in _JIS_X_0201:
            if "\uff61" <= ch <= "\uff9f":
                return True
            continue
        try:
            ch.encode(python_encoding[term])
        except (UnicodeError, KeyError):
            continue
        return True
    return False


def fit(text: str, terms: Sequence[str]) -> str:
    """`text` with each character `terms` cannot hold replaced by "?"."""
    return "".join(ch if can_hold(ch, terms) else "?" for ch in text)
