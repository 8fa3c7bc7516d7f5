"""Desk phone credentials: the passwords the box generates and the only form it keeps of them.

SIP digest auth (RFC 2617/3261) needs the HA1 hash MD5(user:realm:password) on the registrar's
side; that is all the database stores (`store/phones.py`) and all Kamailio is given
(`sip/kamailio.py`). The password itself is shown once, when a phone is added.
"""

from __future__ import annotations

import hashlib
import secrets

# The digest realm every desk phone authenticates in (Kamailio's auth_check uses the same).
REALM = "centralka"

# Letters and digits only, without look-alikes: typed once into a desk phone's web page, where
# a leading "-" or an "l"/"1" mix-up costs a technician a visit.
_PASSWORD_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"


def ha1(username: str, password: str, realm: str = REALM) -> str:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest()


def new_password(length: int = 20) -> str:
    """A phone password nobody has to remember (about 115 bits)."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))
