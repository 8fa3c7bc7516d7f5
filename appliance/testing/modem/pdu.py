"""SMS PDUs as the network and the modem see them (3GPP TS 23.040 / 23.038).

Written independently of gsmmodem.pdu on purpose: every SMS-SUBMIT the box's library writes is
decoded here, so the two codecs check each other. ``encode_deliver_pdus`` and
``encode_status_report_pdu`` make what the network hands the modem.
"""

from __future__ import annotations

import datetime as _dt

ESC = 0x1B  # the septet that escapes to the extension table

# GSM 03.38 default alphabet, index = septet value. 0x1B is the escape to the extension table.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = {
    0x0A: "\x0c",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
_GSM7_INDEX = {ch: i for i, ch in enumerate(GSM7_BASIC) if i != 0x1B}
_GSM7_EXT_INDEX = {ch: code for code, ch in GSM7_EXTENSION.items()}
_SEMI_OCTET = "0123456789*#abc"


def gsm7_septets(text: str) -> list[int]:
    """Septets for ``text`` in the GSM 7-bit alphabet; ValueError when a character has none."""
    out = []
    for ch in text:
        if ch in _GSM7_INDEX:
            out.append(_GSM7_INDEX[ch])
        elif ch in _GSM7_EXT_INDEX:
            out += [ESC, _GSM7_EXT_INDEX[ch]]
        else:
            raise ValueError(f"{ch!r} is not in the GSM 7-bit alphabet")
    return out


def gsm7_text(septets: list[int]) -> str:
    out, escaped = [], False
    for s in septets:
        if escaped:
            # 23.038: an unknown extension code shows as the basic character.
            out.append(GSM7_EXTENSION.get(s, GSM7_BASIC[s]))
            escaped = False
        elif s == ESC:
            escaped = True
        else:
            out.append(GSM7_BASIC[s])
    return "".join(out)


def pack7(septets: list[int], fill_bits: int = 0) -> bytes:
    """Pack septets LSB first, starting ``fill_bits`` into the first octet."""
    value = 0
    for i, s in enumerate(septets):
        value |= (s & 0x7F) << (fill_bits + 7 * i)
    nbytes = (fill_bits + 7 * len(septets) + 7) // 8
    return value.to_bytes(nbytes, "little")


def unpack7(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    value = int.from_bytes(data, "little")
    return [(value >> (fill_bits + 7 * i)) & 0x7F for i in range(count)]


def _encode_address(number: str) -> bytes:
    """TP-OA/TP-DA/TP-RA: digit count, type of address, semi-octets (or packed alphanumerics)."""
    if number.startswith("+") and number[1:].isdigit():
        digits, toa = number[1:], 0x91
    elif number.isdigit():
        digits, toa = number, 0x81
    else:
        packed = pack7(gsm7_septets(number))
        return bytes([(len(gsm7_septets(number)) * 7 + 3) // 4, 0xD0]) + packed
    return bytes([len(digits), toa]) + _semi_octets(digits)


def _semi_octets(digits: str) -> bytes:
    if len(digits) % 2:
        digits += "F"
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, len(digits), 2))


def _decode_address(length: int, toa: int, raw: bytes) -> str:
    if toa & 0x70 == 0x50:
        return gsm7_text(unpack7(raw, length * 4 // 7))
    digits = []
    for octet in raw:
        for nibble in (octet & 0x0F, octet >> 4):
            if nibble == 0x0F:
                break
            digits.append(_SEMI_OCTET[nibble])
    number = "".join(digits)[:length]
    return "+" + number if toa & 0x70 == 0x10 else number


def _smsc_field(number: str | None) -> bytes:
    if not number:
        return b"\x00"
    digits = number.lstrip("+")
    body = bytes([0x91 if number.startswith("+") else 0x81]) + _semi_octets(digits)
    return bytes([len(body)]) + body


def _encode_timestamp(when: _dt.datetime) -> bytes:
    offset = when.utcoffset() or _dt.timedelta(0)
    quarters = int(offset.total_seconds() // 900)
    digits = when.strftime("%y%m%d%H%M%S")
    octets = bytearray(_semi_octets(digits))
    tens, units = divmod(abs(quarters), 10)
    # 23.040 9.2.3.11: the sign is bit 3 of the tens semi-octet, which sits in the low nibble.
    octets.append((units << 4) | tens | (0x08 if quarters < 0 else 0))
    return bytes(octets)


def _alphabet(dcs: int) -> str:
    if dcs & 0xC0 == 0x00:
        return ("gsm7", "8bit", "ucs2", "gsm7")[(dcs >> 2) & 0x03]
    if dcs & 0xF0 == 0xF0:
        return "8bit" if dcs & 0x04 else "gsm7"
    if dcs & 0xF0 == 0xE0:
        return "ucs2"
    return "gsm7"


def _parse_udh(header: bytes) -> dict:
    udh: dict = {"raw": header.hex().upper()}
    i = 0
    while i + 1 < len(header):
        iei, length = header[i], header[i + 1]
        data = header[i + 2 : i + 2 + length]
        if iei == 0x00 and length == 3:
            udh.update(ref=data[0], parts=data[1], seq=data[2])
        elif iei == 0x08 and length == 4:
            udh.update(ref=(data[0] << 8) | data[1], parts=data[2], seq=data[3])
        i += 2 + length
    return udh


def decode_submit_pdu(pdu_hex: str) -> dict:
    """Decode an SMS-SUBMIT PDU as written after AT+CMGS (SMSC field included).

    Raises ValueError for anything a real SMSC would reject: wrong type, user data length that
    disagrees with the octets present, a header that runs past the data.
    """
    data = bytes.fromhex(pdu_hex)
    pos = 1 + data[0]
    first = data[pos]
    if first & 0x03 != 0x01:
        raise ValueError(f"not an SMS-SUBMIT (first octet {first:02X})")
    reference = data[pos + 1]
    da_len, toa = data[pos + 2], data[pos + 3]
    pos += 4
    raw_len = (da_len + 1) // 2
    number = _decode_address(da_len, toa, data[pos : pos + raw_len])
    pos += raw_len
    pid, dcs = data[pos], data[pos + 1]
    pos += 2
    vpf = (first >> 3) & 0x03
    pos += {0: 0, 2: 1}.get(vpf, 7)
    udl = data[pos]
    ud = data[pos + 1 :]
    encoding = _alphabet(dcs)
    header_len, udh = 0, None
    if first & 0x40:
        header_len = ud[0] + 1
        if header_len > len(ud):
            raise ValueError("user data header runs past the data")
        udh = _parse_udh(ud[1:header_len])
    if encoding == "gsm7":
        if len(ud) != (udl * 7 + 7) // 8:
            raise ValueError(f"UDL {udl} septets needs {(udl * 7 + 7) // 8} octets, got {len(ud)}")
        header_septets = (header_len * 8 + 6) // 7
        fill = header_septets * 7 - header_len * 8
        text = gsm7_text(unpack7(ud[header_len:], udl - header_septets, fill))
    else:
        if len(ud) != udl:
            raise ValueError(f"UDL {udl} octets, got {len(ud)}")
        body = ud[header_len:]
        text = body.decode("utf-16-be", "surrogatepass") if encoding == "ucs2" else body.decode("latin-1")
    return {
        "pdu_hex": pdu_hex.upper(),
        "number": number,
        "text": text,
        "udh": udh,
        "encoding": encoding,
        "request_status_report": bool(first & 0x20),
        "reject_duplicates": bool(first & 0x04),
        "reference": reference,
        "protocol_id": pid,
        "dcs": dcs,
        "flash": dcs & 0xD3 == 0x10,
        "tpdu_length": len(data) - 1 - data[0],
    }


def _split_units(units: list, per_part: int, parts: int) -> list[list]:
    """Cut ``units`` into ``parts`` pieces of at most ``per_part``, never inside a pair."""
    size = max(1, -(-len(units) // parts))
    chunks, start = [], 0
    while start < len(units):
        end = min(start + size, len(units))
        # Keep an ESC with its extension code, a high surrogate with its low one.
        if end < len(units) and units[end - 1] in (ESC, "hi"):
            end -= 1
        chunks.append(units[start:end])
        start = end
    if len(chunks) != parts or any(len(c) > per_part for c in chunks):
        raise ValueError(f"text does not fit in {parts} part(s) of {per_part}")
    return chunks


def encode_deliver_pdus(
    sender: str, text: str, *, smsc: str | None, when: _dt.datetime, parts: int = 1, ref: int = 0
) -> list[str]:
    """SMS-DELIVER PDUs (hex, SMSC field included) the way a network hands them to the modem."""
    try:
        septets = gsm7_septets(text)
        ucs2 = False
    except ValueError:
        ucs2 = True
    if ucs2:
        # Characters outside the BMP (emoji) travel as UTF-16 surrogate pairs, two units each.
        raw = text.encode("utf-16-be", "surrogatepass")
        units = [raw[i : i + 2] for i in range(0, len(raw), 2)]
        marks = ["hi" if 0xD8 <= unit[0] <= 0xDB else 0 for unit in units]
        chunks = _split_units(marks, 67 if parts > 1 else 70, parts)
        pieces, k = [], 0
        for chunk in chunks:
            pieces.append(b"".join(units[k : k + len(chunk)]))
            k += len(chunk)
    else:
        chunks = _split_units(septets, 153 if parts > 1 else 160, parts)
    pdus = []
    for seq, chunk in enumerate(chunks, start=1):
        first = 0x04  # TP-MMS: no more messages waiting
        header = b""
        if parts > 1:
            first |= 0x40
            header = bytes([5, 0x00, 3, ref & 0xFF, parts, seq])
        if ucs2:
            body = header + pieces[seq - 1]
            udl, dcs = len(body), 0x08
        else:
            header_septets = (len(header) * 8 + 6) // 7
            fill = header_septets * 7 - len(header) * 8
            body = header + pack7(chunk, fill)
            udl, dcs = header_septets + len(chunk), 0x00
        tpdu = (
            bytes([first])
            + _encode_address(sender)
            + bytes([0x00, dcs])
            + _encode_timestamp(when)
            + bytes([udl])
            + body
        )
        pdus.append((_smsc_field(smsc) + tpdu).hex().upper())
    return pdus


def encode_status_report_pdu(
    mr: int, recipient: str, *, smsc: str | None, sent: _dt.datetime, done: _dt.datetime, status: int
) -> str:
    tpdu = (
        bytes([0x06, mr & 0xFF])
        + _encode_address(recipient)
        + _encode_timestamp(sent)
        + _encode_timestamp(done)
        + bytes([status])
    )
    return (_smsc_field(smsc) + tpdu).hex().upper()
