"""Texts of the prompts the engine itself needs, in Polish and English.

A flow's [prompts] table (or an uploaded recording of the same name) replaces any of them.
Wording follows the seeds: short, concrete, says what happens next; no filler.
"""

BUILTIN_PROMPTS = {
    "pl": {
        "connecting": "Łączę.",
        "still_connecting": "Trwa łączenie. Proszę pozostać na linii.",
        "invalid_choice": "Nie ma takiej opcji.",
        "to_operator": "Łączę z rejestracją.",
        "goodbye": "Dziękujemy za telefon. Do usłyszenia.",
        "all_lines_busy": "Wszystkie linie są zajęte. Proszę pozostać na linii.",
        "test_call": "To jest połączenie testowe z centralki przychodni. Linia działa. Do widzenia.",
        "selftest_ok": "Test centrali. Wybór przyjęty.",
    },
    "en": {
        "connecting": "Connecting you.",
        "still_connecting": "Still connecting. Please stay on the line.",
        "invalid_choice": "That is not an option.",
        "to_operator": "Connecting you to reception.",
        "goodbye": "Thank you for calling. Goodbye.",
        "all_lines_busy": "All lines are busy. Please stay on the line.",
        "test_call": "This is a test call from the clinic's phone box. The line works. Goodbye.",
        "selftest_ok": "Phone box self-test. Choice taken.",
    },
}
