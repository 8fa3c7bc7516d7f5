"""Text that came from outside the box (SIP headers, modem lines, uploads), made safe to keep.

pjsua2 hands C strings to Python with ``surrogateescape``: a byte that is not UTF-8 becomes a
lone surrogate, which sqlite3, the log file and json all refuse to encode. Everything read from
the wire goes through ``wire_text`` before it is stored, logged or compared.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def wire_text(value, limit: int = 256) -> str:
    """``value`` as printable, encodable text: invalid bytes and lone surrogates become U+FFFD,
    control characters (CR/LF included: one log line stays one line) become spaces, and at most
    ``limit`` characters are kept (an ellipsis marks a cut)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", "replace")
    else:
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            try:
                text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            except UnicodeEncodeError:
                text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    text = _CONTROL.sub(" ", text.replace("\r\n", " "))
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text
