"""The call flow as a clinic admin writes it: a TOML file of nodes (docs/FLOW.md).

Loading checks only the *shape* of the file: known keys, required keys, value types. Whether
the flow is good for callers (R2–R8, R18) is the flow doctor's job (doctor.py), so a flow with,
say, a loop still loads and can be shown in the editor with the doctor's findings next to it.
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import FlowSyntaxError

NODE_TYPES = ("play", "menu", "transfer", "operator", "hangup", "queue", "time", "callback", "voicemail")
# Parsed and written back unchanged, but refused by the doctor until their issues land.
RESERVED_TYPES = ("identify",)
PLAY_ROLES = ("gdpr", "goodbye")
TOP_LEVEL_KEYS = ("name", "start", "operator", "language", "prompts", "extensions", "schedules", "nodes")

# A default that stands for "the flow's operator node": R6 says every failure ends at a human.
_OPERATOR = object()


@dataclass(frozen=True)
class _Key:
    name: str
    kind: str  # text, node, sip, seconds, count, bool, role, options
    required: bool = False
    default: object = None


_PROMPT = _Key("prompt", "text", required=True)
_RING = (_Key("ring_timeout", "seconds", default=25), _Key("remind_every", "seconds", default=12))

# Keys of each node type in the order dump_flow writes them (the order of docs/FLOW.md).
NODE_KEYS: dict[str, tuple[_Key, ...]] = {
    "play": (
        _PROMPT,
        _Key("role", "role"),
        _Key("interruptible", "bool", default=True),
        _Key("next", "node", required=True),
    ),
    "menu": (
        _PROMPT,
        _Key("timeout", "seconds", default=5),
        _Key("repeats", "count", default=1),
        _Key("on_timeout", "node", default=_OPERATOR),
        _Key("on_invalid", "node", default=_OPERATOR),
        _Key("extensions", "bool", default=False),
        _Key("options", "options", required=True),
    ),
    "transfer": (
        _Key("target", "sip", required=True),
        _Key("prompt", "text"),
        *_RING,
        _Key("on_fail", "node", default=_OPERATOR),
    ),
    "operator": (_Key("target", "sip", required=True), _Key("prompt", "text"), *_RING),
    "queue": (
        _Key("queue", "text", required=True),
        _Key("prompt", "text"),
        _Key("max_wait", "seconds", default=600),
        _Key("announce_every", "seconds", default=30),
        _Key("leave_key", "text"),
        _Key("on_timeout", "node", default=_OPERATOR),
        _Key("on_leave", "node", default=_OPERATOR),
        _Key("on_no_agents", "node", default=_OPERATOR),
        # Issue 11: a callback node reached by a key at any time, offered aloud after a wait.
        _Key("callback", "node"),
        _Key("callback_key", "text", default="1"),
        _Key("offer_after", "seconds", default=600),
    ),
    "hangup": (),
    # Business hours: a [schedules.NAME] table decides where the caller goes.
    "time": (
        _Key("schedule", "text", required=True),
        _Key("open", "node", required=True),
        _Key("closed", "node", required=True),
        # Closed: say so with the real hours and the next opening, generated from the schedule.
        _Key("announce", "bool", default=True),
    ),
    # A callback request: the promise from the schedule, a confirming key, SMS + e-mail, goodbye.
    "callback": (
        _Key("prompt", "text"),
        _Key("schedule", "text"),
        _Key("topic", "text"),
        _Key("team", "text"),
        _Key("confirm_key", "text", default="1"),
        _Key("timeout", "seconds", default=6),
        _Key("on_decline", "node", default=_OPERATOR),
    ),
    # A voice message after hours (R15): beep, at most max_length, ends on silence or "#".
    "voicemail": (
        _Key("prompt", "text"),
        _Key("max_length", "seconds", default=120),
        _Key("silence", "seconds", default=5),
        _Key("team", "text"),
        _Key("next", "node", default=_OPERATOR),
    ),
}


@dataclass
class Node:
    id: str
    type: str
    params: dict
    # Where the node's table starts in the file it came from; not part of the flow itself.
    line: int | None = field(default=None, compare=False)


@dataclass
class Flow:
    name: str
    start: str
    operator: str | None
    language: str
    prompts: dict[str, str]
    extensions: dict[str, str]
    nodes: dict[str, Node]
    # Business hours by name, as written ([schedules.NAME]); ``schedule(name)`` parses one.
    schedules: dict[str, dict] = field(default_factory=dict)

    def schedule(self, name: str):
        """The parsed :class:`~appliance.flow.hours.Schedule` ``name`` (FlowError if unknown)."""
        from .hours import Schedule

        cache = self.__dict__.setdefault("_schedules", {})
        if name not in cache:
            if name not in self.schedules:
                from appliance.errors import FlowError

                raise FlowError(f"no schedule {name!r} in the flow ([schedules.{name}])")
            cache[name] = Schedule.from_table(self.schedules[name], f"schedules.{name}")
        return cache[name]


def _t(lang: str, pl: str, en: str) -> str:
    return pl if lang == "pl" else en


# --- loading -----------------------------------------------------------------------------


def load_flow_file(path, lang: str = "pl") -> Flow:
    path = Path(path)
    raw = path.read_bytes()
    try:
        # utf-8-sig: Windows Notepad puts a BOM in front, and admins do edit flows there.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise _error(
            _t(lang, "plik nie jest zapisany w UTF-8", "the file is not UTF-8 text"),
            line,
            str(path),
        ) from exc
    return load_flow_text(text, source=str(path), lang=lang)


def load_flow_text(text: str, source: str = "flow.toml", lang: str = "pl") -> Flow:
    """Parse and shape-check a flow; ``lang`` is the language of the error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(exc, text, source, lang) from exc
    return _Loader(_LineIndex(text), source, lang).flow(data)


def _error(message: str, line: int | None, source: str, node: str | None = None):
    err = FlowSyntaxError(message, line=line, source=source)
    # Lets the editor highlight the node; errors.py has no slot for it, so it rides along here.
    err.node = node
    return err


_TOML_MESSAGES_PL = {
    "Invalid value": "nieprawidłowa wartość (czy tekst jest w cudzysłowie?)",
    "Invalid statement": "nieprawidłowy wiersz",
    "Unterminated string": "niezamknięty cudzysłów",
    "Unclosed array": "niezamknięta lista [ ]",
    "Unclosed inline table": "niezamknięta tabela { }",
    "Expected '=' after a key in a key/value pair": "po kluczu brakuje znaku „=”",
    "Expected ']' at the end of a table declaration": "nagłówek tabeli nie kończy się znakiem „]”",
    "Expected newline or end of document after a statement": "po wartości spodziewany jest koniec wiersza",
    "Invalid initial character for a key part": "nieprawidłowy znak na początku klucza",
    "Cannot overwrite a value": "ta wartość jest już ustawiona wyżej",
    "Cannot declare": "ta tabela jest już zadeklarowana wyżej",
    "Unescaped '\\' in a string": "pojedynczy „\\” w tekście; napisz „\\\\”",
}
_TOML_WHERE = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def _toml_error(exc, text, source, lang):
    message = str(exc)
    where = _TOML_WHERE.search(message)
    detail = message[: where.start()] if where else message
    line = column = None
    if where and where.group(1):
        line, column = int(where.group(1)), int(where.group(2))
    elif where:
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
    if lang == "pl":
        for english, polish in _TOML_MESSAGES_PL.items():
            if detail.startswith(english):
                detail = polish
                break
        text_ = f"błąd składni TOML: {detail}"
        if column:
            text_ += f" (kolumna {column})"
    else:
        text_ = f"TOML syntax error: {detail}"
        if column:
            text_ += f" (column {column})"
    return _error(text_, line, source)


class _Loader:
    def __init__(self, lines, source, lang):
        self.lines = lines
        self.source = source
        self.lang = lang

    def fail(self, pl, en, *path, node=None):
        raise _error(_t(self.lang, pl, en), self.lines.find(*path), self.source, node)

    def flow(self, data: dict) -> Flow:
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                hint = self.hint(key, TOP_LEVEL_KEYS)
                allowed = ", ".join(TOP_LEVEL_KEYS)
                self.fail(
                    f"nieznany klucz „{key}”{hint[0]}; dozwolone: {allowed}",
                    f"unknown top-level key “{key}”{hint[1]}; allowed: {allowed}",
                    key,
                )
        if "start" not in data:
            self.fail(
                "brak klucza „start” (węzeł, od którego zaczyna się rozmowa)",
                "missing key “start” (the node a caller meets first)",
            )
        name = self.top_text(data, "name", "")
        start = self.top_text(data, "start", None)
        operator = self.top_text(data, "operator", None)
        language = self.top_text(data, "language", "pl")
        prompts = self.text_table(data, "prompts")
        extensions = self.text_table(data, "extensions")
        nodes_raw = data.get("nodes")
        if not isinstance(nodes_raw, dict) or not nodes_raw:
            self.fail(
                "brak węzłów: dodaj co najmniej jedną tabelę [nodes.…]",
                "no nodes: add at least one [nodes.…] table",
                "nodes",
            )
        nodes = {nid: self.node(nid, raw, operator) for nid, raw in nodes_raw.items()}
        schedules = self.schedules(data)
        return Flow(name, start, operator, language, prompts, extensions, nodes, schedules)

    def schedules(self, data):
        from appliance.errors import FlowError

        from .hours import Schedule

        table = data.get("schedules", {})
        if not isinstance(table, dict):
            self.fail("„schedules” musi być tabelą [schedules.NAZWA]", "“schedules” must be tables [schedules.NAME]")
        for name, raw in table.items():
            if not isinstance(raw, dict):
                self.fail(
                    f"[schedules] „{name}” musi być tabelą [schedules.{name}]",
                    f"[schedules] “{name}” must be a table [schedules.{name}]",
                    "schedules",
                    name,
                )
            try:
                Schedule.from_table(raw, f"schedules.{name}")
            except FlowError as exc:
                self.fail(f"godziny pracy: {exc}", f"business hours: {exc}", "schedules", name)
        return {name: dict(raw) for name, raw in table.items()}

    def top_text(self, data, key, default):
        if key not in data:
            return default
        value = data[key]
        if not isinstance(value, str) or not value:
            self.fail(
                f"„{key}” musi być niepustym tekstem, a podano: {_value(value)}",
                f"“{key}” must be a non-empty string, got: {_value(value)}",
                key,
            )
        return value

    def text_table(self, data, key):
        table = data.get(key, {})
        if not isinstance(table, dict):
            self.fail(f"„{key}” musi być tabelą [{key}]", f"“{key}” must be a table [{key}]", key)
        for name, value in table.items():
            if not isinstance(value, str) or not value:
                self.fail(
                    f"[{key}] „{name}” musi być niepustym tekstem, a podano: {_value(value)}",
                    f"[{key}] “{name}” must be a non-empty string, got: {_value(value)}",
                    key,
                    name,
                )
        return dict(table)

    def node(self, nid, raw, operator) -> Node:
        line = self.lines.find("nodes", nid)
        if not isinstance(raw, dict):
            self.fail(
                f"Węzeł „{nid}”: musi być tabelą [nodes.{nid}]",
                f"Node “{nid}”: must be a table [nodes.{nid}]",
                "nodes",
                nid,
                node=nid,
            )
        kind = raw.get("type")
        known = NODE_TYPES + RESERVED_TYPES
        if kind is None:
            self.fail(
                f"Węzeł „{nid}”: brak klucza „type” ({', '.join(NODE_TYPES)})",
                f"Node “{nid}”: missing key “type” ({', '.join(NODE_TYPES)})",
                "nodes",
                nid,
                node=nid,
            )
        if kind not in known:
            hint = self.hint(str(kind), known)
            self.fail(
                f"Węzeł „{nid}”: nieznany typ {_value(kind)}{hint[0]}; dozwolone: {', '.join(NODE_TYPES)}",
                f"Node “{nid}”: unknown type {_value(kind)}{hint[1]}; allowed: {', '.join(NODE_TYPES)}",
                "nodes",
                nid,
                "type",
                node=nid,
            )
        params = {k: v for k, v in raw.items() if k != "type"}
        if kind in RESERVED_TYPES:
            # Their keys are not designed yet; keep them verbatim so nothing an admin wrote is lost.
            return Node(nid, kind, params, line)

        spec = NODE_KEYS[kind]
        names = [key.name for key in spec]
        for key in params:
            if key not in names:
                hint = self.hint(key, names)
                allowed = ", ".join(["type", *names])
                self.fail(
                    f"Węzeł „{nid}” ({kind}): nieznany klucz „{key}”{hint[0]}; dozwolone: {allowed}",
                    f"Node “{nid}” ({kind}): unknown key “{key}”{hint[1]}; allowed: {allowed}",
                    "nodes",
                    nid,
                    key,
                    node=nid,
                )
        result = {}
        for key in spec:
            if key.name not in params:
                if key.required:
                    self.fail(
                        f"Węzeł „{nid}” ({kind}): brak wymaganego klucza „{key.name}”",
                        f"Node “{nid}” ({kind}): missing required key “{key.name}”",
                        "nodes",
                        nid,
                        node=nid,
                    )
                result[key.name] = operator if key.default is _OPERATOR else key.default
                continue
            value = params[key.name]
            if key.kind == "options":
                result[key.name] = self.options(nid, value)
            elif not _fits(key.kind, value):
                pl, en = _KIND_WORDS[key.kind]
                self.fail(
                    f"Węzeł „{nid}”: „{key.name}” musi być {pl}, a podano: {_value(value)}",
                    f"Node “{nid}”: “{key.name}” must be {en}, got: {_value(value)}",
                    "nodes",
                    nid,
                    key.name,
                    node=nid,
                )
            else:
                result[key.name] = value
        return Node(nid, kind, result, line)

    def options(self, nid, value):
        if not isinstance(value, dict) or not value:
            self.fail(
                f"Węzeł „{nid}”: „options” musi być tabelą klawisz → węzeł z co najmniej jedną opcją, "
                f'np. [nodes.{nid}.options] "1" = "rejestracja"',
                f"Node “{nid}”: “options” must be a table key → node with at least one option, "
                f'e.g. [nodes.{nid}.options] "1" = "registration"',
                "nodes",
                nid,
                "options",
                node=nid,
            )
        for key, target in value.items():
            if not isinstance(target, str) or not target:
                self.fail(
                    f"Węzeł „{nid}”: opcja „{key}” musi wskazywać węzeł (tekst), a podano: {_value(target)}",
                    f"Node “{nid}”: option “{key}” must name a node (a string), got: {_value(target)}",
                    "nodes",
                    nid,
                    "options",
                    key,
                    node=nid,
                )
        return dict(value)

    def hint(self, word, choices):
        close = difflib.get_close_matches(word, choices, n=1)
        if not close:
            return "", ""
        return f" (czy chodziło o „{close[0]}”?)", f" (did you mean “{close[0]}”?)"


_KIND_WORDS = {
    "text": ("niepustym tekstem", "a non-empty string"),
    "node": ("identyfikatorem węzła (tekst)", "a node id (a string)"),
    "sip": (
        "adresem sip:… albo numerem telefonu biurkowego ext:NNN w cudzysłowie",
        "a quoted sip: URI or a desk phone ext:NNN",
    ),
    "seconds": ("liczbą sekund większą od zera", "a number of seconds greater than zero"),
    "count": ("liczbą całkowitą, co najmniej 0", "a whole number, 0 or more"),
    "bool": ("wartością true albo false", "true or false"),
    "role": (f"jedną z wartości: {', '.join(PLAY_ROLES)}", f"one of: {', '.join(PLAY_ROLES)}"),
}


def _fits(kind: str, value) -> bool:
    if kind in ("text", "node"):
        return isinstance(value, str) and value != ""
    if kind == "sip":
        # A SIP URI, or "ext:201" for a desk phone registered at the box (mobiles come later).
        if not isinstance(value, str):
            return False
        if value.startswith("ext:"):
            return value[4:].isdigit() and 2 <= len(value) - 4 <= 6
        return value.startswith("sip:") and len(value) > 4 and not any(c in value for c in ' \t\r\n<>"')
    if kind == "seconds":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value) and value > 0
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "role":
        return value in PLAY_ROLES
    raise AssertionError(kind)


# --- line numbers --------------------------------------------------------------------------

_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")


class _LineIndex:
    """Where each table and key of a TOML text is, so errors can point at a line.

    tomllib keeps no positions, so this re-reads the text line by line. It is a best effort
    (a line inside a multi-line string may fool it); a wrong guess only costs a line number.
    """

    def __init__(self, text: str):
        self.where: dict[tuple, int] = {}
        table: tuple = ()
        in_multiline = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count(in_multiline) % 2:
                    in_multiline = None
                continue
            header = _HEADER.match(line)
            assign = None if header else _ASSIGN.match(line)
            if header:
                table = _split_key(header.group(1))
                self.where.setdefault(table, number)
            elif assign:
                self.where.setdefault(table + _split_key(assign.group(1)), number)
                rest = line[assign.end() :]
                for quotes in ('"""', "'''"):
                    if rest.count(quotes) % 2:
                        in_multiline = quotes

    def find(self, *path) -> int | None:
        # The key's own line if it has one, else the nearest enclosing table's header.
        path = tuple(path)
        while path:
            if path in self.where:
                return self.where[path]
            path = path[:-1]
        return None


def _split_key(dotted: str) -> tuple:
    parts = re.findall(_PART, dotted)
    return tuple(tomllib.loads(f"k = {part}")["k"] if part[0] in "\"'" else part for part in parts)


# --- the graph -----------------------------------------------------------------------------


def edges(flow: Flow, node_id: str) -> list[tuple[str, str]]:
    """Every outgoing edge of a node as (label, target node id); targets may not exist."""
    node = flow.nodes[node_id]
    p = node.params
    out: list[tuple[str, object]] = []
    if node.type == "play":
        out.append(("next", p.get("next")))
    elif node.type == "menu":
        out += [(f"option {key}", target) for key, target in (p.get("options") or {}).items()]
        out.append(("on_timeout", p.get("on_timeout")))
        out.append(("on_invalid", p.get("on_invalid")))
        if p.get("extensions"):
            out += [(f"extension {number}", target) for number, target in flow.extensions.items()]
    elif node.type == "transfer":
        out.append(("on_fail", p.get("on_fail")))
    elif node.type == "queue":
        out += [(k, p.get(k)) for k in ("on_timeout", "on_leave", "on_no_agents", "callback")]
    elif node.type == "time":
        out += [("open", p.get("open")), ("closed", p.get("closed"))]
    elif node.type == "callback":
        out.append(("on_decline", p.get("on_decline")))
    elif node.type == "voicemail":
        out.append(("next", p.get("next")))
    elif node.type in RESERVED_TYPES:
        # A guess until these types are designed, so that the nodes after them are not
        # reported as unreachable.
        out += [(k, v) for k, v in p.items() if k == "next" or k.startswith("on_")]
    return [(label, target) for label, target in out if isinstance(target, str)]


def node_order(flow: Flow) -> list[str]:
    """Node ids as a caller meets them: start first, then breadth-first, then the rest."""
    seen: dict[str, None] = {}
    queue = deque([flow.start] if flow.start in flow.nodes else [])
    while queue:
        nid = queue.popleft()
        if nid in seen:
            continue
        seen[nid] = None
        queue.extend(t for _, t in edges(flow, nid) if t in flow.nodes and t not in seen)
    for nid in flow.nodes:
        seen.setdefault(nid, None)
    return list(seen)


# --- writing -------------------------------------------------------------------------------


def dump_flow(flow: Flow) -> str:
    """The flow as TOML in the layout of docs/FLOW.md; every parameter is written out."""
    out = [f"name = {_value(flow.name)}", f"start = {_value(flow.start)}"]
    if flow.operator is not None:
        out.append(f"operator = {_value(flow.operator)}")
    out.append(f"language = {_value(flow.language)}")
    out += ["", "[prompts]"]
    out += [f"{_key(k)} = {_value(v)}" for k, v in flow.prompts.items()]
    out += ["", "[extensions]"]
    out += [f"{_key(k, quote=True)} = {_value(v)}" for k, v in flow.extensions.items()]
    for name, table in flow.schedules.items():
        out += ["", f"[schedules.{_key(name)}]"]
        out += [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    for nid in node_order(flow):
        node = flow.nodes[nid]
        out += ["", f"[nodes.{_key(nid)}]", f"type = {_value(node.type)}"]
        if node.type in NODE_KEYS:
            names = [key.name for key in NODE_KEYS[node.type]]
            params = {k: node.params[k] for k in names if k in node.params}
            # Anything a program put in params beyond the schema still gets written.
            params.update({k: v for k, v in node.params.items() if k not in params})
        else:
            params = node.params
        _table(out, ("nodes", nid), params, quote_keys=False)
    return "\n".join(out) + "\n"


def _table(out, path, params, quote_keys):
    tables = []
    for k, v in params.items():
        if v is None:
            continue  # TOML has no null: an absent key loads back as None
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            out.append(f"{_key(k, quote_keys)} = {_value(v)}")
    for k, v in tables:
        sub = (*path, k)
        out.append(f"[{'.'.join(_key(part) for part in sub)}]")
        # Option keys are quoted even when bare would do: "1" reads as a key, not a number.
        _table(out, sub, v, quote_keys=(k == "options"))


_BARE = re.compile(r"[A-Za-z0-9_-]+\Z")


def _key(key: str, quote: bool = False) -> str:
    return key if _BARE.match(key) and not quote else _value(key)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        chars = []
        for ch in value:
            if ch in _ESCAPES:
                chars.append(_ESCAPES[ch])
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                chars.append(f"\\u{ord(ch):04X}")
            else:
                chars.append(ch)  # Polish letters stay readable: the file is UTF-8
        return '"' + "".join(chars) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")
