"""Texts a person reads — alarms, line and modem states — built from message ids.

Every sentence lives once here, in Polish and English (:data:`CATALOG`), with ``{name}``
placeholders. Code that has something to say builds a :class:`Msg` (an id and its parameters)
and whoever shows it renders it in the reader's language: the alarm row in the box's language,
the log in English, later the web UI in the admin's. A parameter may itself be a ``Msg`` (a
reason inside a sentence) and is rendered in the same language. ``tests/test_messages.py``
checks that every id has both languages with the same placeholders, so a sentence reworded in
one language can never silently stay in the other.

Also here: the one Polish plural rule (:func:`plural_pl`) that prompts, the flow doctor and
texts share.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, field

log = logging.getLogger("centralka.messages")

LANGUAGES = ("pl", "en")

CATALOG: dict[str, dict[str, str]] = {
    # --- lines ---------------------------------------------------------------------------------
    "line.trunk": {"pl": "Trunk SIP", "en": "The SIP trunk"},
    "line.gsm": {"pl": "Modem GSM", "en": "The GSM modem"},
    "line.state.up": {"pl": "{line} działa", "en": "{line} is up"},
    "line.stable": {
        "pl": "{line} działa stabilnie od {since}",
        "en": "{line} has been stable since {since}",
    },
    "line.stable_after_flaps": {
        "pl": "{line} działa stabilnie od {since} (wcześniej przerwy: {drops})",
        "en": "{line} has been stable since {since} (it dropped {drops} more times before)",
    },
    "line.state.degraded": {"pl": "{line} działa z problemami", "en": "{line} is degraded"},
    "line.state.down": {"pl": "{line} nie działa", "en": "{line} is down"},
    "line.state.absent": {"pl": "{line} jest niedostępny", "en": "{line} is not available"},
    "line.because": {"pl": "{sentence}: {reason}", "en": "{sentence}: {reason}"},
    "line.not_configured": {"pl": "nie skonfigurowano", "en": "not configured"},
    "trunk.registered": {"pl": "zarejestrowany ({detail})", "en": "registered ({detail})"},
    "trunk.registration_failed": {
        "pl": "rejestracja nie powiodła się: {detail}",
        "en": "registration failed: {detail}",
    },
    "trunk.registering": {"pl": "trwa rejestracja", "en": "registering"},
    "trunk.refused_call": {"pl": "trunk odrzucił połączenie: {detail}", "en": "the trunk refused the call: {detail}"},
    "trunk.nothing_rang": {"pl": "nic nie zadzwoniło w ciągu {seconds} s", "en": "nothing rang within {seconds} s"},
    "outbound.failed": {
        "pl": "połączenie wychodzące nie powiodło się: {detail}",
        "en": "outbound call failed: {detail}",
    },
    "outbound.went_through": {"pl": "połączenie wychodzące przeszło", "en": "an outbound call went through"},
    # --- the GSM modem -------------------------------------------------------------------------
    "modem.not_started": {"pl": "nie uruchomiony", "en": "not started"},
    "modem.starting": {"pl": "uruchamianie", "en": "starting"},
    "modem.none_configured": {
        "pl": "nie skonfigurowano ani nie znaleziono modemu",
        "en": "no modem configured or found yet",
    },
    "modem.stopped": {"pl": "zatrzymany", "en": "stopped"},
    "modem.not_found": {"pl": "nie znaleziono modemu", "en": "no modem found"},
    "modem.not_found_at": {"pl": "nie znaleziono modemu pod {device}", "en": "no modem found at {device}"},
    "modem.opening": {"pl": "otwieranie {device}", "en": "opening {device}"},
    "modem.no_answer_at": {
        "pl": "modem pod {device} nie odpowiada ({error})",
        "en": "the modem at {device} does not answer ({error})",
    },
    "modem.resetting_cfun": {
        "pl": "modem nie odpowiada: reset (AT+CFUN=1,1)",
        "en": "the modem does not answer: resetting it (AT+CFUN=1,1)",
    },
    "modem.resetting_usb": {
        "pl": "modem nie odpowiada: reset jego urządzenia USB",
        "en": "the modem does not answer: resetting its USB device",
    },
    "modem.gone_looking": {
        "pl": "modem nie odpowiada nawet po resecie; szukam go co {seconds} s",
        "en": "the modem is not answering even after a reset; looking for it again every {seconds} s",
    },
    "modem.reconnecting": {"pl": "{reason}; ponowne łączenie", "en": "{reason}; reconnecting"},
    "modem.port_failed": {"pl": "port modemu przestał działać ({error})", "en": "the modem's port failed ({error})"},
    "modem.registered_on": {"pl": "zarejestrowany w sieci {operator}", "en": "registered on {operator}"},
    "modem.not_registered": {"pl": "brak rejestracji w sieci", "en": "not registered on the network"},
    "modem.weak_signal": {"pl": "słaby sygnał ({signal}/31)", "en": "weak signal ({signal}/31)"},
    "modem.detail": {"pl": "{detail}", "en": "{detail}"},
    "modem.gone": {
        "pl": "Modem GSM przestał odpowiadać i nie wrócił po resecie: do tego czasu nie ma połączeń ani SMS-ów "
        "przez GSM.",
        "en": "The GSM modem stopped working and did not come back after a reset: no GSM calls or SMS until it does.",
    },
    "modem.back": {"pl": "Modem GSM znów działa.", "en": "The GSM modem is working again."},
    "sim.pin_missing": {
        "pl": "Karta SIM wymaga kodu PIN, a w ustawieniach go nie ma (modem.pin).",
        "en": "The SIM card needs its PIN and none is configured (modem.pin).",
    },
    "sim.pin_refused_before": {
        "pl": "Karta SIM odrzuciła już ten PIN; nie jest wpisywany ponownie (zmień modem.pin).",
        "en": "The SIM card refused this PIN before; it is not tried again (change modem.pin).",
    },
    "sim.pin_refused": {
        "pl": "Karta SIM odrzuciła PIN (błąd CME {code}); nie jest wpisywany ponownie, bo trzy błędne PIN-y "
        "blokują kartę.",
        "en": "The SIM card refused the PIN (CME error {code}); it is not tried again, because three wrong PINs "
        "lock the SIM.",
    },
    "sim.puk": {
        "pl": "Karta SIM jest zablokowana i wymaga kodu PUK (włóż ją do telefonu).",
        "en": "The SIM card is locked and needs its PUK code (put it in a phone).",
    },
    "sim.other_code": {
        "pl": "Karta SIM żąda kodu {code}; Centralka nie może go podać.",
        "en": "The SIM card asks for {code}; Centralka cannot give it.",
    },
    "modem.reset_because": {
        "pl": "{reason}: reset modemu (AT+CFUN=1,1)",
        "en": "{reason}: resetting the modem (AT+CFUN=1,1)",
    },
    "modem.internal_error": {"pl": "błąd wewnętrzny: {error}", "en": "internal error: {error}"},
    "modem.no_answer": {"pl": "modem nie odpowiada ({error})", "en": "no answer from the modem ({error})"},
    "modem.stopped_answering": {"pl": "modem przestał odpowiadać", "en": "the modem stopped answering"},
    "modem.command_timed_out": {"pl": "polecenie do modemu przekroczyło czas", "en": "a command timed out"},
    "modem.sim_busy_for": {
        "pl": "karta SIM jest zajęta od {seconds} s",
        "en": "the SIM card has been busy for {seconds} s",
    },
    "modem.no_network_for": {"pl": "brak sieci od {seconds} s", "en": "no network for {seconds} s"},
    "modem.sim_busy": {"pl": "karta SIM jest zajęta", "en": "the SIM card is busy"},
    "modem.sim_state": {"pl": "karta SIM: {state}", "en": "SIM card: {state}"},
    "modem.no_coverage": {
        "pl": "brak rejestracji w sieci komórkowej (brak zasięgu?)",
        "en": "not registered on the mobile network (no coverage?)",
    },
    "modem.registered": {"pl": "zarejestrowany w sieci", "en": "registered on the network"},
    "gsm.not_ready": {"pl": "modem GSM nie jest gotowy: {reason}", "en": "the GSM modem is not ready: {reason}"},
    "gsm.busy": {"pl": "modem GSM prowadzi już rozmowę", "en": "the GSM modem is already on a call"},
    "gsm.dial_failed": {"pl": "modem nie wybrał numeru: {error}", "en": "the modem did not dial: {error}"},
    # --- SMS -----------------------------------------------------------------------------------
    "sms.outbox_broken": {
        "pl": "nie można otworzyć kolejki SMS: {error}",
        "en": "the SMS outbox cannot be opened: {error}",
    },
    "sms.uncertain": {
        "pl": "centralka zatrzymała się, gdy ten SMS był przekazywany do modemu: mógł zostać wysłany albo nie; nie "
        "jest wysyłany ponownie automatycznie (nigdy dwa razy) — wyślij go ponownie albo anuluj",
        "en": "the box stopped while this SMS was being handed to the modem: it may or may not have been sent; not "
        "resent automatically (never twice) — resend or cancel it",
    },
    "sms.uncertain_because": {
        "pl": "{reason}; SMS nie jest wysyłany ponownie automatycznie (nigdy dwa razy) — wyślij go ponownie "
        "albo anuluj",
        "en": "{reason}; not resent automatically (never twice) — resend or cancel it",
    },
    "sms.uncertain_partial": {
        "pl": "wysłane części: {sent} z {parts}; {reason}; SMS nie jest wysyłany ponownie automatycznie (nigdy dwa "
        "razy) — wyślij go ponownie albo anuluj",
        "en": "{sent} of {parts} part(s) went out; {reason}; not resent automatically (never twice) — resend or "
        "cancel it",
    },
    # --- e-mail --------------------------------------------------------------------------------
    "mail.refused": {
        "pl": "E-mail „{subject}” do {to} nie wyszedł: {why}. Pozostałe e-maile wychodzą.",
        "en": "The e-mail \u201c{subject}\u201d to {to} was not sent: {why}. Other e-mail still goes out.",
    },
    "mail.failing": {
        "pl": "E-maile z centralki nie wychodzą: {why} ({server}).",
        "en": "The box cannot send e-mail: {why} ({server}).",
    },
    "mail.why.config": {"pl": "ustawienia poczty są niepełne", "en": "the mail settings are incomplete"},
    "mail.why.dns": {
        "pl": "nie można odnaleźć serwera poczty (DNS)",
        "en": "the mail server's name does not resolve (DNS)",
    },
    "mail.why.connect": {"pl": "serwer poczty nie przyjmuje połączeń", "en": "the mail server refuses connections"},
    "mail.why.timeout": {"pl": "serwer poczty nie odpowiada", "en": "the mail server does not answer"},
    "mail.why.tls": {
        "pl": "nie udało się nawiązać szyfrowanego połączenia (TLS)",
        "en": "the encrypted connection (TLS) failed",
    },
    "mail.why.auth": {"pl": "serwer poczty odrzucił login lub hasło", "en": "the mail server refused the login"},
    "mail.why.sender": {
        "pl": "serwer poczty odrzucił adres nadawcy",
        "en": "the mail server refused the sender address",
    },
    "mail.why.recipients": {
        "pl": "serwer poczty odrzucił adresy odbiorców",
        "en": "the mail server refused the recipients",
    },
    "mail.why.message": {"pl": "serwer poczty odrzucił wiadomość", "en": "the mail server rejected the message"},
    "mail.why.server": {"pl": "serwer poczty zgłasza błąd", "en": "the mail server reports an error"},
    # --- callbacks: what the caller hears (issue 11) ---------------------------------------------
    "callback.offer": {
        "pl": "Nasz pracownik oddzwoni {promise} na numer, z którego dzwonisz. Aby potwierdzić, wciśnij {key}.",
        "en": "We will call you back {promise} on the number you are calling from. To confirm, press {key}.",
    },
    "callback.offer_typed": {
        "pl": "Nasz pracownik oddzwoni {promise}. Aby potwierdzić, wciśnij {key}.",
        "en": "We will call you back {promise}. To confirm, press {key}.",
    },
    "callback.ask_number": {
        "pl": "Nie widzimy numeru, z którego dzwonisz. Wpisz numer telefonu, pod który mamy oddzwonić, "
        "i zakończ krzyżykiem.",
        "en": "We cannot see the number you are calling from. Type the number we should call back, then press hash.",
    },
    "callback.read_back": {
        "pl": "Wpisany numer to: {digits}. Jeśli jest poprawny, wciśnij 1. Aby wpisać go jeszcze raz, wciśnij 2.",
        "en": "You typed: {digits}. If this is right, press 1. To type it again, press 2.",
    },
    "callback.bad_number": {
        "pl": "Pod ten numer nie możemy oddzwonić.",
        "en": "We cannot call back that number.",
    },
    "callback.confirmed": {
        "pl": "Dziękujemy. Oddzwonimy {promise}.",
        "en": "Thank you. We will call you back {promise}.",
    },
    "callback.merged": {
        "pl": "Twoja prośba o oddzwonienie jest już zapisana. Oddzwonimy {promise}.",
        "en": "Your callback request is already booked. We will call you back {promise}.",
    },
    "callback.sms_follows": {"pl": "Potwierdzenie wyślemy SMS-em.", "en": "We will confirm by text message."},
    "callback.goodbye": {"pl": "Do widzenia.", "en": "Goodbye."},
    "callback.offer_in_queue": {
        "pl": "Aby zamówić oddzwonienie, wciśnij {key}.",
        "en": "To ask for a callback, press {key}.",
    },
    "callback.back_in_line": {
        "pl": "Dobrze, czekasz dalej na swoim miejscu w kolejce.",
        "en": "All right, you keep your place in the queue.",
    },
    "voicemail.start": {
        "pl": "Nagraj wiadomość po sygnale. Na koniec wciśnij krzyżyk albo odłóż słuchawkę.",
        "en": "Leave a message after the tone. When you are done, press hash or hang up.",
    },
    "voicemail.saved": {
        "pl": "Dziękujemy, wiadomość została zapisana. Odsłuchamy ją, gdy tylko wrócimy do pracy.",
        "en": "Thank you, your message is saved. We will listen to it as soon as we are back.",
    },
    # --- callbacks: the box calls back (auto mode, or `centralka callbacks call`) ----------------
    "callback.whisper": {
        "pl": "Oddzwonienie: {number}, {topic}, czeka od {since}. Aby zadzwonić do pacjenta, wciśnij {key}.",
        "en": "Callback: {number}, {topic}, waiting since {since}. To call the patient, press {key}.",
    },
    "callback.dialling": {"pl": "Dzwonię do pacjenta.", "en": "Calling the patient."},
    "callback.patient": {
        "pl": "Dzień dobry, tu {clinic}. Oddzwaniamy w sprawie Pana lub Pani połączenia. "
        "Aby porozmawiać z naszym pracownikiem, wciśnij {key}.",
        "en": "Hello, this is {clinic}. We are calling you back about your call. To talk to us, press {key}.",
    },
    "callback.retry_later": {
        "pl": "Nie udało się połączyć z pacjentem. Spróbujemy ponownie później.",
        "en": "The patient could not be reached. We will try again later.",
    },
    "callback.left_on_list": {
        "pl": "Nie udało się połączyć z pacjentem. Prośba zostaje na liście do oddzwonienia.",
        "en": "The patient could not be reached. The request stays on the callback list.",
    },
    # --- callbacks: alarms ----------------------------------------------------------------------
    "callback.overdue": {
        "pl": "Obietnica oddzwonienia niedotrzymana: {number} ({topic}) czeka od {since}, okno minęło o {until}.",
        "en": "A callback promise was not kept: {number} ({topic}) has waited since {since}; the window ended at "
        "{until}.",
    },
    # --- the self-test call (issue 12) -------------------------------------------------------
    "selftest.passed": {
        "pl": "{number} odebrał po {seconds} s, powitanie się zgadza{key}",
        "en": "{number} answered after {seconds} s, the greeting matches{key}",
    },
    "selftest.answered": {"pl": "{number} odebrał po {seconds} s", "en": "{number} answered after {seconds} s"},
    "selftest.key_worked": {"pl": ", klawisz {key} działa", "en": ", key {key} works"},
    "selftest.no_number": {
        "pl": "brak numeru do sprawdzenia: wpisz publiczny numer linii ([trunk] number, [modem] number)",
        "en": "no number to test: set the lines' public numbers ([trunk] number, [modem] number)",
    },
    "selftest.no_other_line": {
        "pl": "do numeru {number} trzeba zadzwonić drugą linią ({line}), a jej nie ma",
        "en": "{number} must be called over the other line ({line}), which is not there",
    },
    "selftest.busy": {
        "pl": "inny test połączenia właśnie trwa",
        "en": "another self-test call is running",
    },
    "selftest.dial_failed": {"pl": "nie udało się zadzwonić: {detail}", "en": "the call could not be placed: {detail}"},
    "selftest.refused": {"pl": "połączenie odrzucone: {detail}", "en": "the call was refused: {detail}"},
    "selftest.not_answered": {
        "pl": "{number} nie odebrał w ciągu {seconds} s",
        "en": "{number} did not answer within {seconds} s",
    },
    "selftest.not_received": {
        "pl": "połączenie nie dotarło do centralki (odebrał ktoś inny, np. poczta głosowa operatora)",
        "en": "the call did not reach the box (something else answered it, e.g. the operator's voicemail)",
    },
    "selftest.wrong_greeting": {
        "pl": "słychać coś innego niż skonfigurowane powitanie (zgodność {score}, rozpoznano {heard}%)",
        "en": "what answers is not the configured greeting (match {score}, {heard}% of it heard)",
    },
    "selftest.error": {"pl": "błąd w centrali: {detail}", "en": "an error inside the box: {detail}"},
    "selftest.no_audio": {"pl": "po odebraniu nie było słychać dźwięku", "en": "no audio after answering"},
    "selftest.key_failed": {
        "pl": "klawisz {key} nie zadziałał (w menu {node})",
        "en": "key {key} did nothing (in menu {node})",
    },
    "selftest.alarm": {
        "pl": "Test połączenia z numerem {number} nie przechodzi ({count} razy z rzędu): {reason}. "
        "Pacjenci mogą nie móc się dodzwonić.",
        "en": "The self-test call to {number} fails ({count} times in a row): {reason}. "
        "Patients may not be able to get through.",
    },
    "selftest.recovered": {
        "pl": "Test połączenia z numerem {number} znowu przechodzi: {reason}",
        "en": "The self-test call to {number} passes again: {reason}",
    },
}


@dataclass(frozen=True)
class Msg:
    """A sentence by id. ``str(msg)`` is English (for logs); :meth:`text` renders any language."""

    id: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.id not in CATALOG:
            raise KeyError(f"no message {self.id!r} in appliance.messages.CATALOG")

    def text(self, lang: str = "pl") -> str:
        return render(self.id, lang, **self.params)

    def __str__(self) -> str:
        return self.text("en")

    def to_json(self) -> dict:
        return {"id": self.id, "params": {k: _jsonable(v) for k, v in self.params.items()}}

    @classmethod
    def from_json(cls, data) -> Msg | None:
        if not isinstance(data, dict) or data.get("id") not in CATALOG:
            return None
        params = {k: cls.from_json(v) or v if isinstance(v, dict) else v for k, v in (data.get("params") or {}).items()}
        return cls(data["id"], params)


def msg(message_id: str, **params) -> Msg:
    return Msg(message_id, params)


def render(message_id: str, lang: str = "pl", **params) -> str:
    lang = lang if lang in LANGUAGES else "pl"
    template = CATALOG[message_id][lang]
    values = {k: (v.text(lang) if isinstance(v, Msg) else _plain(v)) for k, v in params.items()}
    try:
        return template.format(**values)
    except (KeyError, IndexError) as exc:
        # A parameter missing is a defect, but the alarm must still reach a person.
        log.error("message %s: parameter %s missing", message_id, exc)
        return template


def text_of(value, lang: str = "pl") -> str:
    """A ``Msg`` in ``lang``; anything else (a raw detail from a modem or a server) as it is."""
    if isinstance(value, Msg):
        return value.text(lang)
    return "" if value is None else str(value)


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _plain(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _jsonable(value):
    if isinstance(value, Msg):
        return value.to_json()
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


# --- Polish numbers ------------------------------------------------------------------------------
def plural_form(n: int) -> str:
    """Polish plural category of a count: "one" only for exactly 1; "few" when the last digit is
    2–4 and the last two are not 12–14; otherwise "many" (0, 5–21, 25–31, 111–114 …)."""
    n = abs(int(n))
    if n == 1:
        return "one"
    if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14):
        return "few"
    return "many"


def plural_pl(n: int, one: str, few: str, many: str) -> str:
    """The noun form for ``n``: ``plural_pl(5, "osoba", "osoby", "osób")`` → "osób"."""
    return {"one": one, "few": few, "many": many}[plural_form(n)]
