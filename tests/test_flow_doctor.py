"""The flow doctor refuses a flow that breaks R2–R8/R18 and says which node and which rule.

Prompt lengths come from a table here (every prompt with a text lasts 3 s unless a test says
otherwise); tests elsewhere measure real audio.
"""

import dataclasses
import datetime
import re
from pathlib import Path

import pytest

from appliance.errors import FlowError, FlowRejected, FlowSyntaxError, PromptError
from appliance.flow.doctor import (
    MAX_GREETING_S,
    MAX_HANDOVERS,
    MAX_MENU_OPTIONS,
    MAX_SILENCE_S,
    MENU_PROMPT_WARN_S,
    Finding,
    assert_flow_ok,
    check_flow,
)
from appliance.flow.model import Flow, Node, dump_flow, edges, load_flow_file, load_flow_text

FLOWS = Path(__file__).parent / "flows"
LANGS = ["pl", "en"]
RULE_OF = {
    "greeting-too-long": "R2",
    "gdpr-mandatory": "R2",
    "menu-too-many-options": "R3",
    "nested-menu": "R3",
    "bad-key": "R3",
    "loop": "R5",
    "no-operator": "R6",
    "dead-end": "R6",
    "hangup-not-allowed": "R7",
    "silence-too-long": "R8",
    "too-many-transfers": "R18",
    "hours-disagree": "R14",
    "unknown-schedule": "R14",
    "voicemail-in-hours": "R15",
    "voicemail-after-wait": "R15",
}


def load(name):
    return load_flow_file(FLOWS / name)


def durations(flow, **seconds):
    "Seconds per prompt name; a prompt with neither a text nor a length here cannot be rendered."
    table = {name: 3.0 for name in flow.prompts}
    table.update(seconds)
    return table.get


def errors(findings):
    return {(f.code, f.node) for f in findings if f.level == "error"}


def warnings(findings):
    return {(f.code, f.node) for f in findings if f.level == "warning"}


def quoted(node, lang):
    return f"„{node}”" if lang == "pl" else f"“{node}”"


# --- flows that pass -------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_good_clinic_flow_passes_without_findings(lang):
    flow = load("good.toml")
    # The GDPR notice is long, but it is an option on key 3 (R2), so its length does not matter.
    assert flow.nodes["menu"].params["options"]["3"] == "rodo"
    assert check_flow(flow, durations(flow, rodo=25.0, menu=11.0), lang) == []
    assert assert_flow_ok(flow, durations(flow, rodo=25.0), lang) == []


def test_good_flow_has_the_defaults_the_engine_reads():
    flow = load("good.toml")
    assert flow.operator == "operator"
    assert flow.extensions == {"555": "gabinet_555"}
    assert flow.nodes["powitanie"].params == {
        "prompt": "greeting",
        "role": None,
        "interruptible": True,
        "next": "menu",
    }
    poradnia = flow.nodes["poradnia"].params
    assert (poradnia["ring_timeout"], poradnia["remind_every"], poradnia["on_fail"]) == (25, 12, "operator")
    assert flow.nodes["operator"].params["prompt"] is None
    assert flow.nodes["menu"].line == 21


def test_hangup_after_a_goodbye_when_the_caller_chose_nothing_is_allowed():
    flow = load("allowed_hangup.toml")
    assert check_flow(flow, durations(flow)) == []


def test_edges_lists_every_way_out_of_a_node():
    flow = load("good.toml")
    assert edges(flow, "menu") == [
        ("option 1", "rejestracja"),
        ("option 2", "poradnia"),
        ("option 3", "rodo"),
        ("option 0", "operator"),
        ("on_timeout", "operator"),
        ("on_invalid", "operator"),
        ("extension 555", "gabinet_555"),
    ]
    assert edges(flow, "powitanie") == [("next", "menu")]
    assert edges(flow, "rejestracja") == [("on_fail", "operator")]
    assert edges(flow, "operator") == []


# --- each broken file: the right rule, the right node, in both languages --------------------

BROKEN = [
    # file, prompt lengths, the finding that must be there, every error code the file causes
    ("greeting_too_long.toml", {"greeting": 11.0}, ("greeting-too-long", "powitanie"), {"greeting-too-long"}),
    (
        "greeting_too_long.toml",
        {"greeting": 6.0, "hours": 5.0},
        ("greeting-too-long", "powitanie"),
        {"greeting-too-long"},
    ),
    ("menu_five_options.toml", {}, ("menu-too-many-options", "menu"), {"menu-too-many-options"}),
    ("nested_menu.toml", {}, ("nested-menu", "poradnie"), {"nested-menu"}),
    ("loop.toml", {}, ("loop", "menu"), {"loop"}),
    ("no_operator.toml", {}, ("no-operator", None), {"no-operator"}),
    ("operator_wrong_type.toml", {}, ("no-operator", "sekretariat"), {"no-operator"}),
    ("dead_end.toml", {}, ("dead-end", "rejestracja"), {"dead-end", "hangup-not-allowed"}),
    ("hangup_after_invalid.toml", {}, ("hangup-not-allowed", "koniec"), {"hangup-not-allowed"}),
    ("menu_timeout_20s.toml", {}, ("silence-too-long", "menu"), {"silence-too-long"}),
    ("gdpr_before_queue.toml", {}, ("gdpr-mandatory", "rodo"), {"gdpr-mandatory"}),
    ("four_transfers.toml", {}, ("too-many-transfers", "sekretariat"), {"too-many-transfers"}),
    ("unknown_node.toml", {}, ("unknown-node", "menu"), {"unknown-node"}),
    ("unknown_prompt.toml", {}, ("unknown-prompt", "menu"), {"unknown-prompt"}),
    ("bad_key.toml", {}, ("bad-key", "menu"), {"bad-key"}),
    ("extension_clash.toml", {}, ("bad-key", "menu"), {"bad-key"}),
    ("not_supported.toml", {}, ("not-supported", "kolejka"), {"not-supported"}),
    ("hours_disagree.toml", {}, ("hours-disagree", "oddzwonienie"), {"hours-disagree"}),
    ("unknown_schedule.toml", {}, ("unknown-schedule", "godziny"), {"unknown-schedule"}),
    ("voicemail_in_hours.toml", {}, ("voicemail-in-hours", "poczta"), {"voicemail-in-hours"}),
    ("voicemail_after_wait.toml", {}, ("voicemail-after-wait", "poczta"), {"voicemail-after-wait"}),
]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name, seconds, expected, codes", BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_broken_flow_is_refused_naming_node_and_rule(name, seconds, expected, codes, lang):
    flow = load(name)
    prompt_duration = durations(flow, **seconds)
    findings = check_flow(flow, prompt_duration, lang)

    assert expected in errors(findings)
    assert {code for code, _ in errors(findings)} == codes
    code, node = expected
    finding = next(f for f in findings if (f.code, f.node) == expected)
    if node is not None:
        prefix = "Węzeł" if lang == "pl" else "Node"
        assert finding.message.startswith(f"{prefix} {quoted(node, lang)}: ")
    if code in RULE_OF:
        assert finding.message.endswith(f"({RULE_OF[code]}).")
    other = check_flow(flow, prompt_duration, "en" if lang == "pl" else "pl")
    assert finding.message not in {f.message for f in other}

    with pytest.raises(FlowRejected) as refused:
        assert_flow_ok(flow, prompt_duration, lang)
    assert refused.value.findings == findings
    assert finding.message in str(refused.value)


def test_polish_message_reads_like_the_spec():
    flow = load("menu_five_options.toml")
    [finding] = check_flow(flow, durations(flow), "pl")
    assert finding == Finding(
        "error",
        "menu-too-many-options",
        "menu",
        "Węzeł „menu”: menu ma 5 opcji, dozwolone są najwyżej 4 (R3).",
    )


def test_polish_plural_follows_the_number():
    flow = load("menu_five_options.toml")
    options = {str(i): "rejestracja" for i in range(22)}
    flow.nodes["menu"].params["options"] = options
    [finding] = [f for f in check_flow(flow, durations(flow)) if f.code == "menu-too-many-options"]
    assert "menu ma 22 opcje," in finding.message


# --- syntax: the line and the node ----------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_broken_toml_reports_its_line(lang):
    with pytest.raises(FlowSyntaxError) as caught:
        load_flow_file(FLOWS / "syntax_error.toml", lang=lang)
    assert caught.value.line == 10
    assert str(caught.value).startswith(f"{FLOWS / 'syntax_error.toml'}:10: ")
    assert ("błąd składni" if lang == "pl" else "syntax error") in caught.value.detail


STRUCTURE = [
    # file, line, node, word the message must name
    ("unknown_key.toml", 11, "menu", "timout"),
    ("timeout_not_number.toml", 15, "menu", "timeout"),
    ("missing_key.toml", 8, "powitanie", "next"),
    ("unknown_type.toml", 13, "powitanie", "paly"),
]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name, line, node, word", STRUCTURE)
def test_wrong_shape_names_node_key_and_line(name, line, node, word, lang):
    with pytest.raises(FlowSyntaxError) as caught:
        load_flow_file(FLOWS / name, lang=lang)
    assert (caught.value.line, caught.value.node) == (line, node)
    assert quoted(node, lang) in caught.value.detail
    assert word in caught.value.detail


def test_unknown_play_role_is_refused_on_load():
    text = (FLOWS / "good.toml").read_text().replace('role = "gdpr"', 'role = "rodo"')
    with pytest.raises(FlowSyntaxError) as caught:
        load_flow_text(text, lang="en")
    assert (caught.value.line, caught.value.node) == (51, "rodo")
    assert "“role” must be one of: gdpr, goodbye" in caught.value.detail


def test_typo_in_a_key_gets_a_suggestion():
    with pytest.raises(FlowSyntaxError) as caught:
        load_flow_file(FLOWS / "unknown_key.toml")
    assert "czy chodziło o „timeout”?" in caught.value.detail


def test_unknown_top_level_key_and_missing_start():
    with pytest.raises(FlowSyntaxError) as caught:
        load_flow_text('name = "x"\nstrat = "menu"\n', lang="en")
    assert caught.value.line == 2
    assert "“strat”" in caught.value.detail and "“start”" in caught.value.detail
    with pytest.raises(FlowSyntaxError, match="start"):
        load_flow_text('name = "x"\n[nodes.a]\ntype = "hangup"\n')


def test_a_key_written_twice_points_at_the_second():
    text = (FLOWS / "good.toml").read_text().replace("timeout = 5\n", "timeout = 5\ntimeout = 6\n")
    with pytest.raises(FlowSyntaxError) as caught:
        load_flow_text(text)
    assert caught.value.line == 25  # "timeout = 5" is on line 24


def test_syntax_errors_are_value_errors_so_plain_callers_catch_them():
    with pytest.raises(ValueError):
        load_flow_text("start = ")
    assert issubclass(FlowSyntaxError, FlowError)


def test_windows_bom_is_accepted(tmp_path):
    path = tmp_path / "flow.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (FLOWS / "good.toml").read_bytes())
    assert load_flow_file(path) == load("good.toml")


# --- dump and load ---------------------------------------------------------------------------


def test_good_flow_round_trips_in_the_documented_layout():
    flow = load("good.toml")
    text = dump_flow(flow)
    assert load_flow_text(text) == flow
    assert dump_flow(load_flow_text(text)) == text
    assert re.findall(r"^\[nodes\.([^.\]]+)\]$", text, re.M) == [
        "powitanie",
        "menu",
        "rejestracja",
        "poradnia",
        "rodo",
        "operator",
        "gabinet_555",
    ]
    assert text.index("[prompts]") < text.index("[extensions]") < text.index("[nodes.")
    # Defaults are written out, so an admin diffing two exports sees every setting.
    poradnia = text[text.index("[nodes.poradnia]") : text.index("[nodes.rodo]")]
    assert "ring_timeout = 25\n" in poradnia and 'on_fail = "operator"\n' in poradnia
    assert '[nodes.menu.options]\n"1" = "rejestracja"\n' in text
    assert "Dzień dobry, tu przychodnia Zdrowie." in text


@pytest.mark.parametrize(
    "name",
    sorted(
        p.name
        for p in FLOWS.glob("*.toml")
        if p.name
        not in {
            "syntax_error.toml",
            "unknown_key.toml",
            "timeout_not_number.toml",
            "missing_key.toml",
            "unknown_type.toml",
        }
    ),
)
def test_every_loadable_test_flow_round_trips(name):
    flow = load(name)
    assert load_flow_text(dump_flow(flow)) == flow


def test_awkward_strings_round_trip():
    tricky = 'Zażółć gęślą jaźń: "cudzysłów", \\ukośnik\\, \ttab,\nnowa linia \x7f'
    flow = Flow(
        name="Test „cudzysłowów”",
        start="gabinet 5.5",
        operator="op",
        language="pl",
        prompts={"powitanie z spacją": tricky},
        extensions={"55": "gabinet 5.5"},
        nodes={
            "gabinet 5.5": Node(
                "gabinet 5.5",
                "transfer",
                {
                    "target": "sip:5.5@127.0.0.1",
                    "prompt": "powitanie z spacją",
                    "ring_timeout": 20.5,
                    "remind_every": 10,
                    "on_fail": "op",
                },
            ),
            "op": Node(
                "op", "operator", {"target": "sip:op@127.0.0.1", "prompt": None, "ring_timeout": 25, "remind_every": 12}
            ),
        },
    )
    text = dump_flow(flow)
    assert load_flow_text(text) == flow
    assert "Zażółć gęślą jaźń" in text
    assert '[nodes."gabinet 5.5"]' in text


def test_line_numbers_do_not_count_as_a_difference():
    flow = load("good.toml")
    moved = dataclasses.replace(flow, nodes={k: dataclasses.replace(n, line=None) for k, n in flow.nodes.items()})
    assert moved == flow


# --- limits: the last allowed value passes, the next one is refused --------------------------


def test_menu_timeout_15_ok_16_refused():
    assert MAX_SILENCE_S == 15
    flow = load("good.toml")
    flow.nodes["menu"].params["timeout"] = 15
    assert errors(check_flow(flow, durations(flow))) == set()
    flow.nodes["menu"].params["timeout"] = 16
    assert errors(check_flow(flow, durations(flow))) == {("silence-too-long", "menu")}


def test_reminder_while_ringing_every_15_s_ok_16_refused():
    flow = load("good.toml")
    flow.nodes["rejestracja"].params["remind_every"] = 15
    assert errors(check_flow(flow, durations(flow))) == set()
    flow.nodes["rejestracja"].params["remind_every"] = 16
    flow.nodes["operator"].params["remind_every"] = 30
    assert errors(check_flow(flow, durations(flow))) == {
        ("silence-too-long", "rejestracja"),
        ("silence-too-long", "operator"),
    }


def test_exactly_four_options_ok_five_refused():
    assert MAX_MENU_OPTIONS == 4
    flow = load("good.toml")
    assert len(flow.nodes["menu"].params["options"]) == 4
    assert errors(check_flow(flow, durations(flow))) == set()
    flow.nodes["menu"].params["options"]["4"] = "poradnia"
    assert errors(check_flow(flow, durations(flow))) == {("menu-too-many-options", "menu")}


def test_three_handovers_ok_four_refused():
    assert MAX_HANDOVERS == 3
    flow = load("four_transfers.toml")
    # rejestracja -> poradnia -> operator: three hand-overs.
    flow.nodes["poradnia"].params["on_fail"] = "operator"
    assert errors(check_flow(flow, durations(flow))) == set()
    # rejestracja -> poradnia -> gabinet -> operator: four.
    flow.nodes["poradnia"].params["on_fail"] = "gabinet"
    flow.nodes["gabinet"].params["on_fail"] = "operator"
    findings = check_flow(flow, durations(flow), "en")
    assert errors(findings) == {("too-many-transfers", "operator")}
    assert "menu → rejestracja → poradnia → gabinet → operator" in findings[0].message


def test_greeting_of_exactly_10_s_ok_a_bit_more_refused():
    assert MAX_GREETING_S == 10
    flow = load("greeting_too_long.toml")
    assert check_flow(flow, durations(flow, greeting=10.0, hours=0.0)) == []
    [alone] = check_flow(flow, durations(flow, greeting=10.2, hours=0.0))
    assert alone.message == "Węzeł „powitanie”: powitanie („greeting”) trwa 10,2 s, dozwolone jest najwyżej 10 s (R2)."
    assert check_flow(flow, durations(flow, greeting=6.0, hours=4.0)) == []
    findings = check_flow(flow, durations(flow, greeting=6.0, hours=4.01))
    assert errors(findings) == {("greeting-too-long", "powitanie")}
    # Rounded up, so it never reads "10 s, at most 10 s".
    assert "powitanie → godziny) trwa łącznie 10,1 s" in findings[0].message


def test_greeting_counts_a_start_menu_prompt_too():
    flow = load("menu_timeout_20s.toml")
    flow.nodes["menu"].params["timeout"] = 5
    assert errors(check_flow(flow, durations(flow, menu=10.5))) == {("greeting-too-long", "menu")}


# --- details of single rules -----------------------------------------------------------------


def test_gdpr_notice_after_no_choice_is_still_mandatory():
    flow = load("good.toml")
    flow.nodes["menu"].params["on_timeout"] = "rodo"
    assert errors(check_flow(flow, durations(flow))) == {("gdpr-mandatory", "rodo")}


def test_hangup_after_a_goodbye_chosen_by_a_key_is_refused():
    flow = load("allowed_hangup.toml")
    flow.nodes["menu"].params["options"]["9"] = "pozegnanie"
    findings = check_flow(flow, durations(flow), "en")
    assert errors(findings) == {("hangup-not-allowed", "koniec")}
    assert "option “9”" in findings[0].message


def test_hangup_straight_after_a_menu_is_refused():
    flow = load("allowed_hangup.toml")
    flow.nodes["menu"].params["on_timeout"] = "koniec"
    assert ("hangup-not-allowed", "koniec") in errors(check_flow(flow, durations(flow)))


def test_a_transfer_with_no_fallback_is_a_dead_end():
    flow = load("no_operator.toml")
    flow.nodes["rejestracja"].params["on_fail"] = None
    assert errors(check_flow(flow, durations(flow))) == {
        ("no-operator", None),
        ("dead-end", "rejestracja"),
    }


def test_a_cycle_is_reported_once_with_its_nodes():
    flow = load("loop.toml")
    # A second way round the same nodes: godziny -> menu also by on_invalid.
    flow.nodes["menu"].params["on_invalid"] = "godziny"
    loops = [f for f in check_flow(flow, durations(flow), "en") if f.code == "loop"]
    assert len(loops) == 1
    assert loops[0].node == "menu"
    assert "menu → godziny → menu" in loops[0].message


def test_every_finding_is_reported_not_only_the_first():
    flow = load("loop.toml")
    flow.nodes["menu"].params["timeout"] = 20
    flow.nodes["menu"].params["options"].update({"2": "x", "3": "rejestracja", "4": "rejestracja"})
    assert errors(check_flow(flow, durations(flow))) == {
        ("loop", "menu"),
        ("silence-too-long", "menu"),
        ("menu-too-many-options", "menu"),
        ("unknown-node", "menu"),
    }


def test_a_broken_graph_does_not_crash_the_doctor():
    flow = load("loop.toml")
    flow.start = "nie_ma"
    flow.operator = "tez_nie_ma"
    flow.nodes["godziny"].params["next"] = "menu"
    flow.nodes["rejestracja"].params["on_fail"] = "rejestracja"
    found = errors(check_flow(flow, durations(flow)))
    assert ("unknown-node", None) in found  # the start
    assert ("no-operator", None) in found
    assert ("loop", "menu") in found and ("loop", "rejestracja") in found


def test_missing_start_and_unknown_extension_target():
    flow = load("good.toml")
    flow.start = "powitanko"
    flow.extensions["556"] = "gabinet_556"
    findings = check_flow(flow, durations(flow), "pl")
    assert [f.message for f in findings if f.code == "unknown-node"] == [
        "„start” wskazuje węzeł „powitanko”, którego nie ma.",
        "[extensions] numer „556” wskazuje węzeł „gabinet_556”, którego nie ma.",
    ]


def test_extension_numbers_have_two_to_six_digits():
    flow = load("good.toml")
    flow.extensions = {"5": "gabinet_555", "5555555": "gabinet_555", "55a": "gabinet_555"}
    bad = [f for f in check_flow(flow, durations(flow), "en") if f.code == "bad-key"]
    assert [f.node for f in bad] == [None, None, None]
    assert all("2 to 6 digits" in f.message and "(R3)" in f.message for f in bad)


def test_prompt_that_cannot_be_rendered_is_unknown():
    flow = load("good.toml")

    def broken_tts(name):
        if name == "connecting":
            raise PromptError("espeak-ng failed")
        return 3.0

    assert errors(check_flow(flow, broken_tts)) == {
        ("unknown-prompt", "rejestracja"),
        ("unknown-prompt", "poradnia"),
    }


# --- warnings: the flow still loads ----------------------------------------------------------


def test_long_menu_prompt_is_a_warning_only():
    flow = load("good.toml")
    seconds = MENU_PROMPT_WARN_S + 1
    found = assert_flow_ok(flow, durations(flow, menu=seconds), "pl")
    assert [(f.level, f.code, f.node) for f in found] == [("warning", "menu-prompt-too-long", "menu")]
    assert "13 s" in found[0].message and "(R3)" in found[0].message
    assert assert_flow_ok(flow, durations(flow, menu=MENU_PROMPT_WARN_S)) == []


@pytest.mark.parametrize("lang", LANGS)
def test_filler_phrase_is_a_warning(lang):
    flow = load("good.toml")
    flow.prompts["greeting"] = "Dzień dobry. Twoje   połączenie jest dla nas bardzo ważne."
    found = assert_flow_ok(flow, durations(flow), lang)
    assert warnings(found) == {("filler-phrase", "powitanie")}
    assert "(R2)" in found[0].message


def test_unreachable_node_is_a_warning_but_an_idle_operator_is_not():
    flow = load("no_operator.toml")  # every fallback there goes to "sekretariat"
    flow.operator = "dyzurny"  # so the operator only takes calls after internal errors (R6)
    for nid in ("dyzurny", "stary"):
        flow.nodes[nid] = Node(
            nid, "operator", {"target": f"sip:{nid}@127.0.0.1", "prompt": None, "ring_timeout": 25, "remind_every": 12}
        )
    found = assert_flow_ok(flow, durations(flow), "en")
    assert warnings(found) == {("unreachable", "stary")}
    assert found[0].message == "Node “stary”: no path from “menu” leads to this node."


def test_errors_come_before_warnings():
    flow = load("menu_timeout_20s.toml")
    flow.prompts["menu"] = "Your call is important to us. Press 1."
    findings = check_flow(flow, durations(flow), "en")
    assert [f.level for f in findings] == ["error", "warning"]


def test_finding_is_immutable():
    finding = Finding("error", "loop", "menu", "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.code = "other"


def _queue_flow(**params):
    flow = load_flow_file(FLOWS / "queue_good.toml")
    node = flow.nodes["rejestracja"]
    flow.nodes["rejestracja"] = dataclasses.replace(node, params={**node.params, **params})
    return flow


def test_a_queue_is_a_human_destination():
    flow = _queue_flow()
    assert errors(check_flow(flow, durations(flow), "pl")) == set()


@pytest.mark.parametrize("lang", LANGS)
def test_queue_announcing_less_than_once_a_minute_is_refused(lang):
    ok = _queue_flow(announce_every=60)
    assert errors(check_flow(ok, durations(ok), lang)) == set()
    slow = _queue_flow(announce_every=61)
    found = [f for f in check_flow(slow, durations(slow), lang) if f.level == "error"]
    assert [(f.code, f.node) for f in found] == [("silence-too-long", "rejestracja")]
    assert "R8" in found[0].message


def test_queue_leave_key_must_be_one_key():
    flow = _queue_flow(leave_key="12")
    found = [f for f in check_flow(flow, durations(flow), "en") if f.level == "error"]
    assert [(f.code, f.node) for f in found] == [("bad-key", "rejestracja")]


def test_queue_timeout_into_a_hangup_is_a_dead_end():
    flow = _queue_flow(on_timeout="do_widzenia")
    flow.nodes["do_widzenia"] = Node(
        "do_widzenia", "play", {"prompt": "menu", "role": "goodbye", "next": "koniec", "interruptible": True}
    )
    flow.nodes["koniec"] = Node("koniec", "hangup", {})
    found = errors(check_flow(flow, durations(flow), "pl"))
    assert ("dead-end", "rejestracja") in found


def test_business_hours_flow_with_callback_and_voicemail_after_hours_is_accepted():
    flow = load("hours_good.toml")
    assert check_flow(flow, durations(flow)) == []
    assert ("closed", "oddzwonienie") in edges(flow, "godziny")
    assert ("callback", "oddzwonienie_kolejka") in edges(flow, "kolejka")
    assert flow.schedule("przychodnia").intervals_on(datetime.date(2026, 12, 4))[0].start == datetime.time(8)


def test_the_hours_a_prompt_names_are_read_in_every_usual_form():
    from appliance.flow.doctor import _hours_in

    assert _hours_in("Pracujemy od 8:00 do 18:00.") == ["8:00", "18:00"]
    assert _hours_in("w piątek 8.30–12.00") == ["8:30", "12:00"]
    assert _hours_in("czynne od 8 do 16, w soboty 9-13") == ["8:00", "16:00", "9:00", "13:00"]
    assert _hours_in("Zadzwoń pod 600 123 456 albo 22 123-45-67") == []


def test_a_broken_schedule_is_a_syntax_error_on_its_line():
    text = (FLOWS / "hours_good.toml").read_text().replace('tue = ["08:00-18:00"]', 'tue = ["8-18"]')
    with pytest.raises(FlowSyntaxError) as caught:
        load_flow_text(text, "hours.toml", lang="en")
    assert caught.value.line == text.splitlines().index("[schedules.przychodnia]") + 1
    assert "schedules.przychodnia.tue" in str(caught.value)
