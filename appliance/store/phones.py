"""Desk phones that register at the box (through Kamailio)."""

from __future__ import annotations

import re

from ..errors import ConfigError
from ..credentials import ha1, new_password
from .db import utcnow

_EXT = re.compile(r"^[0-9]{2,6}$")


def set_phone(db, extension: str, name: str = "") -> str:
    """Create a phone or give it a new password; returns the password (shown once, never stored)."""
    if not _EXT.match(extension):
        raise ConfigError(f"extension {extension!r}: use 2-6 digits")
    password = new_password()
    now = utcnow()
    existing = db["phones"].rows_where("extension = ?", [extension])
    created = next(iter(existing), {}).get("created_at", now)
    db["phones"].upsert(
        {
            "extension": extension,
            "name": name,
            "ha1": ha1(extension, password),
            "created_at": created,
            "updated_at": now,
        },
        pk="extension",
    )
    return password


def list_phones(db) -> list[dict]:
    return list(db["phones"].rows_where(order_by="extension"))


def remove_phone(db, extension: str) -> bool:
    if not db["phones"].count_where("extension = ?", [extension]):
        return False
    db["phones"].delete(extension)
    return True
