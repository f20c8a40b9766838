"""Reading a user's text file: UTF-8, with a byte-order mark at its start read as the encoding
mark it is (spreadsheets and Windows editors write one), and any other text refused naming the
file and the byte."""

from __future__ import annotations

from pathlib import Path

from zscir_cli.core.errors import UserError

ENCODING = "utf-8-sig"  # UTF-8; a leading BOM is dropped, not read as part of the first line


def read_text(path: str | Path, what: str = "") -> str:
    """The file's text; a file that is not UTF-8 is a user error naming it and the first bad byte."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode(ENCODING)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}){f', {what}' if what else ''}.",
                        "Save it as UTF-8.") from None
