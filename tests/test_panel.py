"""The status LED and the button (appliance/panel.py) on gpiozero's MockFactory: the pattern a
person sees for "all good", "a line is down" and "setup needed", a long press that runs the
self-test call (stored with trigger "button"), a very long press that blinks the setup code."""

import asyncio
import time

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.config import load_settings
from appliance.flow.model import load_flow_file
from appliance.lines import Lines
from appliance.panel import Panel, setup_code_path
from appliance.selftest.call import SelfTestCalls
from appliance.services import Services
from appliance.store.db import open_db
from appliance.testing.clock import ManualClock
from appliance.testing.demo import DATA_DIR

LED_PIN, BUTTON_PIN = 17, 27


@pytest.fixture
def box(tmp_path):
    settings = load_settings(None, env={}, box={"data_dir": str(tmp_path)})
    db = open_db(None)
    clock = ManualClock()
    svc = Services(settings=settings, db=db, clock=clock)
    svc.lines = Lines(db, settings, clock=clock)
    svc.flow = load_flow_file(DATA_DIR / "demo_flow.toml")
    svc.selftest = SelfTestCalls(svc)
    return svc


async def started(svc, **kw):
    factory = MockFactory()
    panel = Panel(svc, factory=factory, **kw)
    panel.start()
    svc.lines.listeners.append(lambda *_: panel.update())
    return panel, factory.pin(LED_PIN), factory.pin(BUTTON_PIN)


async def toggles(pin, at_least: int, timeout: float = 5.0) -> list:
    """Wait until the LED changed ``at_least`` times; returns its (relative-time) history."""
    deadline = time.monotonic() + timeout
    while len(pin.states) < at_least + 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return list(pin.states)


def test_the_led_says_setup_needed_all_good_and_line_down(box):
    async def scenario():
        panel, led, _ = await started(box)
        try:
            assert panel.pattern == "setup"  # no line configured yet
            box.lines.update("trunk", "up", "registered")
            assert panel.pattern == "ok"
            led.clear_states()
            await asyncio.sleep(0.3)
            assert led.state and len(led.states) == 1  # steady on: no blinking
            box.lines.update("trunk", "down", "registration failed: 408")
            assert panel.pattern == "line_down"
            led.clear_states()
            history = await toggles(led, 3)
            assert len(history) >= 4
            assert all(0.5 < s.timestamp < 2.0 for s in history[2:4])  # a slow blink, about a second each
            box.lines.update("trunk", "up", "registered")
            assert panel.pattern == "ok"
            setup_code_path(box.settings).write_text("4071\n")  # first boot's code not used yet
            panel.update()
            assert panel.pattern == "setup"
            led.clear_states()
            history = await toggles(led, 4)
            assert all(s.timestamp < 0.4 for s in history[2:5])  # a fast blink
        finally:
            await panel.stop()

    asyncio.run(scenario())


def test_a_long_press_runs_the_self_test_call(box):
    async def scenario():
        panel, _, button = await started(box)
        try:
            button.drive_low()
            box.clock.advance(1.0)
            button.drive_high()  # a short press does nothing
            await asyncio.sleep(0.1)
            assert list(box.db["selftest_calls"].rows) == []
            button.drive_low()
            box.clock.advance(3.5)
            button.drive_high()
            await asyncio.sleep(0.1)
            await box.selftest.running
            rows = list(box.db["selftest_calls"].rows)
            # It ran: with no public number configured it can only say so.
            assert [(r["trigger"], r["result"]) for r in rows] == [("button", "SKIP")]
            assert "brak numeru" in rows[0]["reason"]
        finally:
            await panel.stop()

    asyncio.run(scenario())


def test_a_very_long_press_blinks_the_setup_code(box):
    setup_code_path(box.settings).write_text("203\n")

    async def scenario():
        panel, led, button = await started(box, code_unit_s=0.05)
        try:
            button.drive_low()
            box.clock.advance(11)
            led.clear_states()
            button.drive_high()
            await asyncio.sleep(0.1)
            await panel._showing
            # Pulses grouped by the long pauses between digits: 2, 10 (for 0), 3.
            counts, run, gap = [], 0, 0.0
            for s in led.states[1:]:
                gap += s.timestamp
                if s.state:
                    if gap > 0.15 and run:
                        counts.append(run)
                        run = 0
                    run += 1
                gap = 0.0
            counts.append(run)
            assert counts[:3] == [2, 10, 3], counts
            assert panel.pattern == "setup"  # and back to the usual pattern
        finally:
            await panel.stop()

    asyncio.run(scenario())
