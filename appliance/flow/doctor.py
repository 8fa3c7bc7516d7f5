"""The flow doctor: refuses a call flow that would treat callers badly (docs/FLOW.md, R2–R8, R18).

It reports every finding at once, so the admin can fix a flow in one go, and it never gives
up on a broken graph: missing nodes and cycles are findings like any other.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Callable

from appliance.errors import FlowRejected, PromptError
from appliance.flow.model import RESERVED_TYPES, Flow, edges, node_order
from appliance.messages import plural_pl

# R2, seed 004: "Powitanie jest zbyt długie, trwa ponad 10 sekund" is listed as a defect.
MAX_GREETING_S = 10
# R3, seed 004: "Optymalny jest jeden poziom … I maksymalnie 4 kierunki."
MAX_MENU_OPTIONS = 4
# R8, seed 002 §2: never "dłużej niż kilkanaście sekund w jednym punkcie … bez żadnej informacji".
MAX_SILENCE_S = 15
# R18, seed 002 §5 "Nie przełączaj w nieskończoność": the seed gives no number; 3 is ours.
MAX_HANDOVERS = 3
# R3, seeds 000/002 §4: menu options "krótkie, zwięzłe i jasne"; a warning, not a refusal.
MENU_PROMPT_WARN_S = 12

PHONE_KEYS = set("0123456789*#")
EXTENSION = re.compile(r"[0-9]{2,6}\Z")
# R2, seed 000: "Cenimy Twoje połączenie" was rated the most irritating phrase on a company line.
FILLER_PHRASES = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"(twoje|pana|pani|państwa) połączenie jest dla nas (bardzo )?ważne",
        r"cenimy (twoje|pana|pani|państwa) połączenie",
        r"your call is (very )?important",
        r"we value your call",
    )
]
HUMAN_TYPES = ("transfer", "operator", "queue")
# R8/R10, seed 000: hold music is interrupted by "honest wait announcements"; a caller should
# hear where they stand at least once a minute.
MAX_QUEUE_ANNOUNCE_S = 60


@dataclass(frozen=True)
class Finding:
    level: str  # "error" refuses the flow, "warning" does not
    code: str
    node: str | None
    message: str


def check_flow(flow: Flow, prompt_duration: Callable[[str], float | None], lang: str = "pl") -> list[Finding]:
    """All findings about ``flow``, errors first; ``prompt_duration`` gives seconds or None."""
    return _Doctor(flow, prompt_duration, lang).run()


def assert_flow_ok(flow: Flow, prompt_duration: Callable[[str], float | None], lang: str = "pl") -> list[Finding]:
    """Raise FlowRejected if the doctor finds any error; otherwise return the warnings."""
    findings = check_flow(flow, prompt_duration, lang)
    if any(f.level == "error" for f in findings):
        raise FlowRejected(findings)
    return findings


class _Doctor:
    def __init__(self, flow, prompt_duration, lang):
        self.flow = flow
        self.prompt_duration = prompt_duration
        self.pl = lang == "pl"
        self.findings: list[Finding] = []
        self.durations: dict[str, float | None] = {}
        nodes = flow.nodes
        self.order = node_order(flow)
        # Edges to nodes that do not exist are reported once (unknown-node) and left out of
        # the graph, so every other rule can still walk it.
        self.succ = {nid: [(label, t) for label, t in edges(flow, nid) if t in nodes] for nid in nodes}
        self.reach = {nid: self._walk([t for _, t in self.succ[nid]]) for nid in nodes}
        if flow.start in nodes:
            self.reachable = {flow.start} | self.reach[flow.start]
        else:
            self.reachable = set(nodes)  # no start: judge every node rather than none
        self.preds: dict[str, list[tuple[str, str]]] = {nid: [] for nid in nodes}
        for nid in self.order:
            if nid in self.reachable:
                for label, t in self.succ[nid]:
                    self.preds[t].append((nid, label))

    # -- plumbing --

    def run(self) -> list[Finding]:
        for rule in (
            self.not_supported,
            self.no_operator,
            self.unknown_node,
            self.unknown_prompt,
            self.greeting_too_long,
            self.menu_too_many_options,
            self.bad_key,
            self.nested_menu,
            self.loop,
            self.dead_end,
            self.hangup_not_allowed,
            self.silence_too_long,
            self.queue_rules,
            self.hours_rules,
            self.voicemail_rules,
            self.gdpr_mandatory,
            self.too_many_transfers,
            self.warnings,
        ):
            rule()
        return sorted(self.findings, key=lambda f: f.level != "error")

    def add(self, level, code, node, rid, pl, en):
        if node is not None:
            text = f"Węzeł „{node}”: {pl}" if self.pl else f"Node “{node}”: {en}"
        else:
            text = pl if self.pl else en
        if rid:
            text += f" ({rid})"
        self.findings.append(Finding(level, code, node, text + "."))

    def error(self, code, node, rid, pl, en):
        self.add("error", code, node, rid, pl, en)

    def warning(self, code, node, rid, pl, en):
        self.add("warning", code, node, rid, pl, en)

    def q(self, name) -> str:
        return f"„{name}”" if self.pl else f"“{name}”"

    def label(self, label: str) -> str:
        kind, _, key = label.partition(" ")
        if kind == "option":
            return f"opcja {self.q(key)}" if self.pl else f"option {self.q(key)}"
        if kind == "extension":
            return f"numer wewnętrzny {self.q(key)}" if self.pl else f"extension {self.q(key)}"
        return self.q(label)

    def secs(self, value) -> str:
        # Rounded up, so a 10.01 s greeting never reads as "10 s, at most 10 s allowed".
        text = f"{math.ceil(value * 10) / 10:g}"
        return text.replace(".", ",") if self.pl else text

    def path(self, ids) -> str:
        return " → ".join(ids)

    def nodes_of(self, *types):
        return [nid for nid in self.order if self.flow.nodes[nid].type in types]

    def duration(self, prompt):
        if prompt not in self.durations:
            try:
                self.durations[prompt] = self.prompt_duration(prompt)
            except PromptError:
                self.durations[prompt] = None
        return self.durations[prompt]

    def _walk(self, first, follow=None) -> set[str]:
        seen: set[str] = set()
        queue = deque(first)
        while queue:
            nid = queue.popleft()
            if nid in seen:
                continue
            seen.add(nid)
            queue.extend(t for label, t in self.succ[nid] if follow is None or follow(label))
        return seen

    def path_to(self, start, goal, follow=None):
        "Shortest list of node ids from start to goal (goal may equal start: a cycle)."
        parents = {}
        queue = deque([start])
        while queue:
            nid = queue.popleft()
            for label, t in self.succ[nid]:
                if follow is not None and not follow(label):
                    continue
                if t == goal:
                    ids = [t, nid]
                    while ids[-1] != start:
                        ids.append(parents[ids[-1]])
                    return ids[::-1]
                if t not in parents and t != start:
                    parents[t] = nid
                    queue.append(t)
        return None

    # -- the rules of docs/FLOW.md --

    def not_supported(self):
        for nid in self.nodes_of(*RESERVED_TYPES):
            kind = self.flow.nodes[nid].type
            self.error(
                "not-supported",
                nid,
                None,
                f"typ węzła „{kind}” nie jest jeszcze obsługiwany",
                f"node type “{kind}” is not supported yet",
            )

    def no_operator(self):
        op = self.flow.operator
        if op is None:
            self.error(
                "no-operator",
                None,
                "R6",
                'Przebieg nie wskazuje operatora: dodaj operator = "…" i węzeł typu operator — '
                "człowieka, do którego trafia każde połączenie, którego nic innego nie obsłużyło",
                'The flow names no operator: add operator = "…" and a node of type operator — '
                "the human who gets every call nothing else could handle",
            )
        elif op not in self.flow.nodes:
            self.error(
                "no-operator",
                None,
                "R6",
                f"Operator „{op}” nie istnieje: dodaj węzeł [nodes.{op}] typu operator",
                f"The operator “{op}” does not exist: add a node [nodes.{op}] of type operator",
            )
        elif self.flow.nodes[op].type != "operator":
            kind = self.flow.nodes[op].type
            self.error(
                "no-operator",
                op,
                "R6",
                f"wskazany jako operator, więc musi mieć typ „operator”, a ma typ „{kind}”",
                f"named as the operator, so its type must be “operator”, not “{kind}”",
            )

    def unknown_node(self):
        nodes = self.flow.nodes
        if self.flow.start not in nodes:
            self.error(
                "unknown-node",
                None,
                None,
                f"„start” wskazuje węzeł „{self.flow.start}”, którego nie ma",
                f"“start” names the node “{self.flow.start}”, which does not exist",
            )
        for number, target in self.flow.extensions.items():
            if target not in nodes:
                self.error(
                    "unknown-node",
                    None,
                    None,
                    f"[extensions] numer „{number}” wskazuje węzeł „{target}”, którego nie ma",
                    f"[extensions] number “{number}” names the node “{target}”, which does not exist",
                )
        for nid in self.order:
            for label, target in edges(self.flow, nid):
                if target not in nodes and not label.startswith("extension "):
                    self.error(
                        "unknown-node",
                        nid,
                        None,
                        f"{self.label(label)} prowadzi do węzła „{target}”, którego nie ma",
                        f"{self.label(label)} leads to the node “{target}”, which does not exist",
                    )

    def unknown_prompt(self):
        for nid in self.order:
            prompt = self.flow.nodes[nid].params.get("prompt")
            if prompt is None or self.duration(prompt) is not None:
                continue
            if prompt in self.flow.prompts:
                pl = f"nie udało się przygotować zapowiedzi „{prompt}” z jej tekstu"
                en = f"the prompt “{prompt}” could not be rendered from its text"
            else:
                pl = f"zapowiedź „{prompt}” nie ma ani tekstu w [prompts], ani nagrania"
                en = f"the prompt “{prompt}” has neither a text in [prompts] nor a recording"
            self.error("unknown-prompt", nid, None, pl, en)

    def greeting_too_long(self):
        start = self.flow.start
        if start not in self.flow.nodes:
            return
        node = self.flow.nodes[start]
        if node.type == "time":
            # Business hours first: the greeting is what each branch plays first.
            for branch in (node.params.get("open"), node.params.get("closed")):
                if branch in self.flow.nodes and self.flow.nodes[branch].type == "play":
                    self._greeting_from(branch)
            return
        self._greeting_from(start)

    def _greeting_from(self, start):
        chain = [start]
        # The greeting is everything played before the caller can do anything: the start
        # node and the `play` nodes straight after it, up to the first menu or transfer.
        while self.flow.nodes[chain[-1]].type == "play":
            nxt = self.flow.nodes[chain[-1]].params.get("next")
            if nxt not in self.flow.nodes or nxt in chain or self.flow.nodes[nxt].type != "play":
                break
            chain.append(nxt)
        lengths = [self.duration(p) for p in (self.flow.nodes[n].params.get("prompt") for n in chain)]
        first = lengths[0] or 0
        total = sum(x for x in lengths if x)
        limit = self.secs(MAX_GREETING_S)
        if first > MAX_GREETING_S:
            prompt = self.flow.nodes[start].params.get("prompt")
            self.error(
                "greeting-too-long",
                start,
                "R2",
                f"powitanie („{prompt}”) trwa {self.secs(first)} s, dozwolone jest najwyżej {limit} s",
                f"the greeting (“{prompt}”) lasts {self.secs(first)} s, at most {limit} s is allowed",
            )
        elif total > MAX_GREETING_S:
            self.error(
                "greeting-too-long",
                start,
                "R2",
                f"powitanie ({self.path(chain)}) trwa łącznie {self.secs(total)} s, dozwolone jest najwyżej {limit} s",
                f"the greeting ({self.path(chain)}) lasts {self.secs(total)} s in all, at most {limit} s is allowed",
            )

    def menu_too_many_options(self):
        for nid in self.nodes_of("menu"):
            n = len(self.flow.nodes[nid].params.get("options") or {})
            if n > MAX_MENU_OPTIONS:
                word = plural_pl(n, "opcję", "opcje", "opcji")
                self.error(
                    "menu-too-many-options",
                    nid,
                    "R3",
                    f"menu ma {n} {word}, dozwolone są najwyżej {MAX_MENU_OPTIONS}",
                    f"the menu has {n} options, at most {MAX_MENU_OPTIONS} are allowed",
                )

    def bad_key(self):
        for number in self.flow.extensions:
            if not EXTENSION.match(number):
                self.error(
                    "bad-key",
                    None,
                    "R3",
                    f"[extensions] numer wewnętrzny „{number}” musi mieć od 2 do 6 cyfr",
                    f"[extensions] the extension “{number}” must have 2 to 6 digits",
                )
        for nid in self.nodes_of("menu"):
            params = self.flow.nodes[nid].params
            options = params.get("options") or {}
            for key in options:
                if key not in PHONE_KEYS:
                    self.error(
                        "bad-key",
                        nid,
                        "R3",
                        f"klawisza „{key}” nie ma na klawiaturze telefonu; opcja to jeden z klawiszy 0–9, * albo #",
                        f"“{key}” is not a phone key; an option is one of the keys 0–9, * or #",
                    )
            if not params.get("extensions"):
                continue
            for number in self.flow.extensions:
                # The menu acts on the first key; an extension starting with an option's key
                # could never be dialled.
                if number[:1] in options:
                    self.error(
                        "bad-key",
                        nid,
                        "R3",
                        f"numer wewnętrzny „{number}” zaczyna się od „{number[0]}”, a to już "
                        "jest opcja tego menu, więc nie da się go wybrać",
                        f"the extension “{number}” starts with “{number[0]}”, which is already "
                        "an option of this menu, so it cannot be dialled",
                    )

    def nested_menu(self):
        menus = [nid for nid in self.nodes_of("menu") if nid in self.reachable]
        outer: dict[str, list[str]] = {}
        for nid in menus:
            for other in menus:
                if other != nid and other in self.reach[nid]:
                    outer.setdefault(other, []).append(nid)
        for nid in menus:
            if nid in outer:
                names = ", ".join(self.q(m) for m in outer[nid])
                self.error(
                    "nested-menu",
                    nid,
                    "R3",
                    f"to menu jest osiągalne z menu {names}; dozwolony jest tylko jeden poziom menu",
                    f"this menu can be reached from the menu {names}; only one menu level is allowed",
                )

    def loop(self):
        done: set[str] = set()
        for nid in self.order:
            if nid not in self.reachable or nid in done or nid not in self.reach[nid]:
                continue
            # One finding per group of nodes that reach each other, however many cycles it holds.
            group = {m for m in self.reach[nid] if nid in self.reach[m]}
            done |= group
            cycle = self.path_to(nid, nid)
            others = sorted(group - set(cycle), key=self.order.index)
            pl = f"pętla {self.path(cycle)}: dzwoniący może krążyć w kółko i nie trafić do człowieka"
            en = f"loop {self.path(cycle)}: a caller could go round and never reach a human"
            if others:
                pl += f" (w pętli są też: {', '.join(others)})"
                en += f" (also on the loop: {', '.join(others)})"
            self.error("loop", nid, "R5", pl, en)

    def dead_end(self):
        for nid in self.order:
            if nid not in self.reachable:
                continue
            node = self.flow.nodes[nid]
            if node.type in ("operator", "hangup") or node.type in RESERVED_TYPES:
                continue  # a human, a hang-up (judged by its own rule), or refused already
            missing = [
                k
                for k in ("next", "on_timeout", "on_invalid", "on_fail", "on_leave", "on_no_agents", "on_decline")
                if k in node.params and node.params[k] is None
            ]
            for key in missing:
                self.error(
                    "dead-end",
                    nid,
                    "R6",
                    f"„{key}” nie wskazuje żadnego węzła (nie ma też operatora), więc tu połączenie utknie",
                    f"“{key}” names no node (and there is no operator), so calls get stuck here",
                )
            if missing:
                continue
            if not self.succ[nid] and not edges(self.flow, nid):
                self.error(
                    "dead-end",
                    nid,
                    "R6",
                    "tu przebieg się kończy, a dzwoniący nie trafia do człowieka",
                    "the flow ends here without the caller reaching a human",
                )
            fallbacks = {
                "transfer": ("on_fail",),
                "queue": ("on_timeout", "on_leave", "on_no_agents"),
                "callback": ("on_decline",),
                "voicemail": ("next",),
            }
            for key in fallbacks.get(node.type, ()):
                if node.params.get(key) not in self.flow.nodes:
                    continue
                # Ringing a person (or waiting for one) is not yet reaching one: the way on
                # from a failed transfer or a queue must itself end at a human.
                hangups = self.hangups_before_human(node.params[key])
                if hangups:
                    names = ", ".join(self.q(h) for h in hangups)
                    self.error(
                        "dead-end",
                        nid,
                        "R6",
                        f"gdy nikt nie odbierze, „{key}” prowadzi do rozłączenia ({names}) zamiast do człowieka",
                        f"when nobody answers, “{key}” leads to a hang-up ({names}) instead of a human",
                    )

    def hangups_before_human(self, first):
        found, seen, queue = [], set(), deque([first])
        while queue:
            nid = queue.popleft()
            if nid in seen:
                continue
            seen.add(nid)
            kind = self.flow.nodes[nid].type
            if kind in HUMAN_TYPES:
                continue
            if kind == "hangup":
                found.append(nid)
            queue.extend(t for _, t in self.succ[nid])
        return sorted(found, key=self.order.index)

    def hangup_not_allowed(self):
        nodes = self.flow.nodes
        for nid in self.nodes_of("hangup"):
            if nid not in self.reachable:
                continue
            problems = []
            if nid == self.flow.start:
                problems.append(("rozmowa zaczyna się od rozłączenia", "the call starts with a hang-up"))
            for before, label in self.preds[nid]:
                node = nodes[before]
                if node.type != "play" or node.params.get("role") != "goodbye":
                    problems.append(
                        (
                            f"„{before}” prowadzi tu, a nie jest pożegnaniem",
                            f"“{before}” leads here and is not a goodbye",
                        )
                    )
                    continue
                if before == self.flow.start:
                    problems.append(
                        (
                            f"pożegnanie „{before}” jest pierwszym węzłem rozmowy",
                            f"the goodbye “{before}” is the first node of the call",
                        )
                    )
                for source, how in self.preds[before]:
                    if nodes[source].type != "menu" or how != "on_timeout":
                        problems.append(
                            (
                                f"do pożegnania „{before}” prowadzi {self.label(how)} z węzła „{source}”",
                                f"the goodbye “{before}” is reached by {self.label(how)} of the node “{source}”",
                            )
                        )
            if problems:
                reasons = "; ".join(pl if self.pl else en for pl, en in problems)
                self.error(
                    "hangup-not-allowed",
                    nid,
                    "R7",
                    'rozłączyć wolno tylko zaraz po pożegnaniu (play z role = "goodbye"), do '
                    "którego dzwoniący trafia wyłącznie przez „on_timeout” menu, gdy niczego nie "
                    f"wybrał; tutaj: {reasons}",
                    'the box may hang up only right after a goodbye (play with role = "goodbye") '
                    "reached only through a menu's “on_timeout”, when the caller chose nothing; "
                    f"here: {reasons}",
                )

    def silence_too_long(self):
        limit = self.secs(MAX_SILENCE_S)
        for nid in self.nodes_of("callback"):
            key = self.flow.nodes[nid].params.get("confirm_key")
            if key is not None and (len(key) != 1 or key not in PHONE_KEYS):
                self.error(
                    "bad-key",
                    nid,
                    "R3",
                    f"„confirm_key” {self.q(key)} nie jest jednym klawiszem telefonu (0-9, *, #)",
                    f"“confirm_key” {self.q(key)} is not one phone key (0-9, *, #)",
                )
        for nid in self.order:
            params = self.flow.nodes[nid].params
            kind = self.flow.nodes[nid].type
            timeout = params.get("timeout")
            if kind in ("menu", "callback") and timeout is not None and timeout > MAX_SILENCE_S:
                self.error(
                    "silence-too-long",
                    nid,
                    "R8",
                    f"po zapowiedzi menu dzwoniący czeka w ciszy {self.secs(timeout)} s "
                    f"(„timeout”), dozwolone jest najwyżej {limit} s",
                    f"after the menu prompt the caller waits in silence for {self.secs(timeout)} s "
                    f"(“timeout”), at most {limit} s is allowed",
                )
            remind = params.get("remind_every")
            if kind in HUMAN_TYPES and remind is not None and remind > MAX_SILENCE_S:
                self.error(
                    "silence-too-long",
                    nid,
                    "R8",
                    f"podczas dzwonienia przypomnienie pada co {self.secs(remind)} s "
                    f"(„remind_every”), dozwolone jest najwyżej co {limit} s",
                    f"while it rings the caller hears a reminder every {self.secs(remind)} s "
                    f"(“remind_every”), at most every {limit} s is allowed",
                )

    def queue_rules(self):
        for nid in self.order:
            node = self.flow.nodes[nid]
            if node.type != "queue":
                continue
            every = node.params.get("announce_every")
            if every is not None and every > MAX_QUEUE_ANNOUNCE_S:
                self.error(
                    "silence-too-long",
                    nid,
                    "R8",
                    f"w kolejce zapowiedź miejsca i czasu oczekiwania pada co {self.secs(every)} s "
                    f"(„announce_every”), dozwolone jest najwyżej co {self.secs(MAX_QUEUE_ANNOUNCE_S)} s",
                    f"in the queue the position and wait are announced every {self.secs(every)} s "
                    f"(“announce_every”), at most every {self.secs(MAX_QUEUE_ANNOUNCE_S)} s is allowed",
                )
            cb_key = node.params.get("callback_key")
            if node.params.get("callback") is not None and cb_key is not None:
                if len(cb_key) != 1 or cb_key not in PHONE_KEYS:
                    self.error(
                        "bad-key",
                        nid,
                        "R3",
                        f"„callback_key” {self.q(cb_key)} nie jest jednym klawiszem telefonu (0-9, *, #)",
                        f"“callback_key” {self.q(cb_key)} is not one phone key (0-9, *, #)",
                    )
                elif cb_key == node.params.get("leave_key"):
                    self.error(
                        "bad-key",
                        nid,
                        "R3",
                        f"klawisz {self.q(cb_key)} jest jednocześnie „callback_key” i „leave_key”",
                        f"the key {self.q(cb_key)} is both “callback_key” and “leave_key”",
                    )
                target = node.params.get("callback")
                if target in self.flow.nodes and self.flow.nodes[target].type != "callback":
                    self.error(
                        "bad-target",
                        nid,
                        "R12",
                        f"„callback” ma wskazywać węzeł typu callback, a {self.q(target)} ma typ "
                        f"{self.q(self.flow.nodes[target].type)}",
                        f"“callback” must name a node of type callback; {self.q(target)} is of type "
                        f"{self.q(self.flow.nodes[target].type)}",
                    )
            key = node.params.get("leave_key")
            if key is not None and (len(key) != 1 or key not in PHONE_KEYS):
                self.error(
                    "bad-key",
                    nid,
                    "R3",
                    f"„leave_key” {self.q(key)} nie jest jednym klawiszem telefonu (0-9, *, #)",
                    f"“leave_key” {self.q(key)} is not one phone key (0-9, *, #)",
                )

    def hours_rules(self):
        """R14: schedules exist and parse; what prompts say about hours agrees with them."""
        for nid in self.order:
            node = self.flow.nodes[nid]
            name = node.params.get("schedule") if node.type in ("time", "callback") else None
            if name is None:
                if node.type == "callback" and len(self.flow.schedules) > 1:
                    self.error(
                        "unknown-schedule",
                        nid,
                        "R12",
                        "przebieg ma kilka godzin pracy: wskaż w „schedule”, które wyznaczają obietnicę oddzwonienia",
                        "the flow has several schedules: name in “schedule” the one the callback promise follows",
                    )
                continue
            if name not in self.flow.schedules:
                known = ", ".join(self.q(k) for k in self.flow.schedules) or ("brak" if self.pl else "none")
                self.error(
                    "unknown-schedule",
                    nid,
                    "R14",
                    f"godziny pracy {self.q(name)} nie istnieją (są: {known}); dodaj tabelę [schedules.{name}]",
                    f"the schedule {self.q(name)} does not exist (known: {known}); add a table [schedules.{name}]",
                )
                continue
            if node.type != "time":
                continue
            boundaries = _boundaries(self.flow.schedules[name])
            closed = node.params.get("closed")
            after = self._walk([closed]) if closed in self.flow.nodes else set()
            for prompt_node in sorted(after, key=self.order.index):
                prompt = self.flow.nodes[prompt_node].params.get("prompt")
                text = self.flow.prompts.get(prompt) if prompt else None
                wrong = [t for t in _hours_in(text or "") if t not in boundaries]
                if wrong:
                    said = ", ".join(wrong)
                    real = ", ".join(sorted(boundaries, key=_minutes)) or "—"
                    self.error(
                        "hours-disagree",
                        prompt_node,
                        "R14",
                        f"zapowiedź {self.q(prompt)} podaje godziny {said}, których nie ma w godzinach "
                        f"pracy {self.q(name)} ({real}); usuń je z tekstu — godziny i najbliższe otwarcie "
                        "mówi sam węzeł „time”",
                        f"the prompt {self.q(prompt)} says {said}, which is not in the schedule {self.q(name)} "
                        f"({real}); take the hours out — the “time” node says the hours and the next opening itself",
                    )

    def voicemail_rules(self):
        """R15: voicemail only after hours, after the closed message, never after a queue wait."""
        voicemails = [nid for nid in self.nodes_of("voicemail") if nid in self.reachable]
        if not voicemails or self.flow.start not in self.flow.nodes:
            return

        def in_hours(label):
            return label != "closed"

        open_reach = {self.flow.start} | self._walk(
            [t for label, t in self.succ[self.flow.start] if in_hours(label)], in_hours
        )
        after_queue = self._walk([t for q in self.nodes_of("queue") for _, t in self.succ[q]])
        for nid in voicemails:
            if self.flow.nodes[self.flow.start].type == "time" and nid == self.flow.start:
                continue
            if nid in open_reach:
                route = self.path_to(self.flow.start, nid, in_hours) or [self.flow.start, nid]
                self.error(
                    "voicemail-in-hours",
                    nid,
                    "R15",
                    f"poczta głosowa jest osiągalna w godzinach pracy ({self.path(route)}); ma być "
                    "tylko po godzinach, za gałęzią „closed” węzła „time”",
                    f"voicemail can be reached during business hours ({self.path(route)}); it must come "
                    "only after hours, behind a “time” node's “closed” branch",
                )
            elif nid in after_queue:
                self.error(
                    "voicemail-after-wait",
                    nid,
                    "R15",
                    "poczta głosowa jest osiągalna z kolejki; po długim czekaniu dzwoniący ma trafić do "
                    "człowieka albo dostać oddzwonienie, nie pocztę",
                    "voicemail can be reached from a queue; after a long wait a caller must reach a person "
                    "or get a callback, not voicemail",
                )

    def gdpr_mandatory(self):
        start = self.flow.start
        if start not in self.flow.nodes:
            return

        def unchosen(label):
            # Only a key the caller pressed counts as choosing the notice.
            return not label.startswith(("option ", "extension "))

        heard = {start} | self._walk([t for label, t in self.succ[start] if unchosen(label)], unchosen)
        for nid in self.nodes_of("play"):
            if nid in heard and self.flow.nodes[nid].params.get("role") == "gdpr":
                route = [start] if nid == start else self.path_to(start, nid, unchosen)
                self.error(
                    "gdpr-mandatory",
                    nid,
                    "R2",
                    f"dzwoniący słyszy informację RODO, choć jej nie wybrał ({self.path(route)}); "
                    "ma być opcją w menu, a nie obowiązkowym wstępem",
                    f"callers hear the GDPR notice without choosing it ({self.path(route)}); "
                    "it must be a menu option, not a mandatory preamble",
                )

    def too_many_transfers(self):
        order = [nid for nid in self.order if nid in self.reachable]

        def forward(nid):
            # Edges inside a cycle are left out: the loop rule refuses those already, and
            # without them the longest path is well defined.
            return [t for _, t in self.succ[nid] if nid not in self.reach[t]]

        waiting = {nid: 0 for nid in order}
        for nid in order:
            for t in forward(nid):
                waiting[t] += 1
        ready = deque(nid for nid in order if waiting[nid] == 0)
        handovers: dict[str, int] = {}
        parent: dict[str, str] = {}
        while ready:
            nid = ready.popleft()
            own = 1 if self.flow.nodes[nid].type in HUMAN_TYPES else 0
            handovers[nid] = handovers.get(nid, 0) + own
            for t in forward(nid):
                if handovers[nid] > handovers.get(t, -1):
                    handovers[t], parent[t] = handovers[nid], nid
                waiting[t] -= 1
                if waiting[t] == 0:
                    ready.append(t)
        for nid in order:
            if handovers.get(nid) == MAX_HANDOVERS + 1 and self.flow.nodes[nid].type in HUMAN_TYPES:
                route = [nid]
                while route[-1] in parent:
                    route.append(parent[route[-1]])
                route.reverse()
                n = handovers[nid]
                self.error(
                    "too-many-transfers",
                    nid,
                    "R18",
                    f"na ścieżce {self.path(route)} połączenie jest przekazywane {n} razy, "
                    f"dozwolone są najwyżej {MAX_HANDOVERS}",
                    f"along {self.path(route)} the call is handed over {n} times, at most {MAX_HANDOVERS} are allowed",
                )

    def warnings(self):
        start = self.flow.start
        for nid in self.order:
            node = self.flow.nodes[nid]
            # The operator also takes calls after internal errors (R6), so it is never idle.
            if start in self.flow.nodes and nid not in self.reachable and nid != self.flow.operator:
                self.warning(
                    "unreachable",
                    nid,
                    None,
                    f"żadna ścieżka od „{start}” nie prowadzi do tego węzła",
                    f"no path from “{start}” leads to this node",
                )
            prompt = node.params.get("prompt")
            if prompt is None:
                continue
            length = self.duration(prompt)
            if node.type == "menu" and length is not None and length > MENU_PROMPT_WARN_S:
                self.warning(
                    "menu-prompt-too-long",
                    nid,
                    "R3",
                    f"zapowiedź menu „{prompt}” trwa {self.secs(length)} s, zalecane jest "
                    f"najwyżej {self.secs(MENU_PROMPT_WARN_S)} s",
                    f"the menu prompt “{prompt}” lasts {self.secs(length)} s, at most "
                    f"{self.secs(MENU_PROMPT_WARN_S)} s is recommended",
                )
            text = self.flow.prompts.get(prompt, "")
            for phrase in FILLER_PHRASES:
                found = phrase.search(" ".join(text.split()))
                if found:
                    self.warning(
                        "filler-phrase",
                        nid,
                        "R2",
                        f"zapowiedź „{prompt}” zawiera pusty frazes „{found.group(0)}”",
                        f"the prompt “{prompt}” contains the filler phrase “{found.group(0)}”",
                    )


_HOURS = re.compile(r"(?<![\d:])([01]?\d|2[0-4])[:.]([0-5]\d)(?![\d:])")
_HOUR = r"([01]?\d|2[0-4])"
_HOURS_SPAN = re.compile(rf"\bod\s+{_HOUR}\s+do\s+{_HOUR}\b|\b{_HOUR}\s*-\s*{_HOUR}\b")


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _hours_in(text: str) -> list[str]:
    """Times of day a prompt text mentions ("8:00", "8.30", "od 8 do 16"), as H:MM."""
    found = [f"{int(h)}:{m}" for h, m in _HOURS.findall(text)]
    rest = _HOURS.sub(" ", text)
    for match in _HOURS_SPAN.finditer(rest):
        found += [f"{int(g)}:00" for g in match.groups() if g is not None]
    return list(dict.fromkeys(found))


def _boundaries(table: dict) -> set[str]:
    """Every start and end of the schedule's hours (weekly and one-off openings), as H:MM."""
    from appliance.errors import FlowError

    from .hours import Schedule

    try:
        schedule = Schedule.from_table(table)
    except FlowError:
        return set()
    intervals = [iv for day in schedule.weekly.values() for iv in day]
    intervals += [iv for day in schedule.openings.values() for iv in day]
    out = set()
    for iv in intervals:
        out.add(f"{iv.start.hour}:{iv.start.minute:02d}")
        out.add("24:00" if iv.end.hour == 0 and iv.end.minute == 0 else f"{iv.end.hour}:{iv.end.minute:02d}")
    return out
