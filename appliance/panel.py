"""The box's front: one status LED and one button (gpiozero), for a technician or a receptionist
standing next to it.

The LED says one of three things (checked again on every line change and every few seconds):

- **steady on** — all good: every configured line up and the self-test call passing;
- **slow blink** (1 s on, 1 s off) — a line is down, or the self-test call fails (patients may
  not get through): `centralka status` / the web UI say which;
- **fast blink** (0.15 s) — setup needed: no call flow, no line configured, or the first-boot
  setup code still waiting to be used (``<data_dir>/setup-code``, written by the image's
  first boot and removed once the admin has set the box up).

While the self-test call runs the LED flickers (0.1 s on, 0.9 s off). The button:

- a **long press** (held ``long_press_s``, 3 s, then released) runs the self-test call;
- a **very long press** (``very_long_press_s``, 10 s) shows the setup code again: each digit
  as that many blinks (0 as ten), a pause between digits, then the usual pattern.

gpiozero is the only hardware interface (``[gpio] mock = true`` gives its MockFactory, as in the
demo and the tests). Everything here runs on the core's event loop; gpiozero's callbacks come on
its own threads and are handed over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

log = logging.getLogger("centralka.panel")

PATTERNS = {
    "ok": None,  # steady on
    "line_down": (1.0, 1.0),
    "setup": (0.15, 0.15),
    "selftest": (0.1, 0.9),
}
REFRESH_S = 5.0


def setup_code_path(settings) -> Path:
    return Path(settings.box.data_dir) / "setup-code"


class Panel:
    def __init__(self, services, *, factory=None, code_unit_s: float = 0.3):
        self.services = services
        g = services.settings.sections.get("gpio") or {}
        self.long_press_s = float(g.get("long_press_s", 3.0))
        self.very_long_press_s = float(g.get("very_long_press_s", 10.0))
        self.code_unit_s = code_unit_s
        self.led = self.button = None
        self.pattern: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pressed_at: float | None = None
        self._showing: asyncio.Task | None = None
        self._refresh: asyncio.Task | None = None
        self._factory = factory
        if factory is None and g.get("mock"):
            from gpiozero.pins.mock import MockFactory

            self._factory = MockFactory()
        self._pins = (g.get("led_pin"), g.get("button_pin"))

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Claim the pins; a pin that cannot be had is logged, and the box goes on without it."""
        from gpiozero import LED, Button
        from gpiozero.exc import BadPinFactory

        self.loop = asyncio.get_running_loop()
        led_pin, button_pin = self._pins

        def unavailable(what, pin, exc):
            # Not a Raspberry Pi at all (a developer's machine): said once, quietly. On a Pi a
            # pin that cannot be had is a fault a technician must see.
            if isinstance(exc, BadPinFactory):
                log.warning("%s on GPIO%s: no GPIO on this machine (%s); [gpio] mock = true to try it", what, pin, exc)
            else:
                log.error("%s on GPIO%s unavailable: %s: %s", what, pin, type(exc).__name__, exc)

        if led_pin not in (None, "", -1):
            try:
                self.led = LED(int(led_pin), pin_factory=self._factory)
            except Exception as exc:  # noqa: BLE001 — gpiozero raises many kinds; no LED is no reason to stop
                unavailable("status LED", led_pin, exc)
        if button_pin not in (None, "", -1):
            try:
                self.button = Button(int(button_pin), pin_factory=self._factory, bounce_time=None)
                self.button.when_pressed = lambda *_: self._from_gpio(self._pressed)
                self.button.when_released = lambda *_: self._from_gpio(self._released)
            except Exception as exc:  # noqa: BLE001
                unavailable("button", button_pin, exc)
        self.update()
        self._refresh = self.loop.create_task(self._refresh_loop(), name="panel")

    async def stop(self) -> None:
        for task in (self._refresh, self._showing):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        for device in (self.led, self.button):
            if device is not None:
                device.close()
        self.led = self.button = None

    async def _refresh_loop(self):
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                self.update()
            except Exception:  # noqa: BLE001 — a failed look must not stop the next
                log.exception("status LED update failed")

    # --- the LED ------------------------------------------------------------------------------
    def state(self) -> str:
        """Which pattern the box should show now."""
        svc = self.services
        if svc.selftest is not None and svc.selftest.running is not None and not svc.selftest.running.done():
            return "selftest"
        if setup_code_path(svc.settings).exists() or svc.flow is None:
            return "setup"
        lines = svc.lines.snapshot() if svc.lines is not None else {}
        configured = [h for h in lines.values() if h["state"] != "absent"]
        if not configured:
            return "setup"
        if any(h["state"] == "down" for h in configured) or (svc.selftest is not None and svc.selftest.failing()):
            return "line_down"
        return "ok"

    def update(self) -> None:
        if self.led is None or (self._showing is not None and not self._showing.done()):
            return
        pattern = self.state()
        if pattern == self.pattern:
            return
        self.pattern = pattern
        log.info("status LED: %s", pattern)
        times = PATTERNS[pattern]
        if times is None:
            self.led.on()
        else:
            self.led.blink(on_time=times[0], off_time=times[1])

    def self_check(self) -> dict:
        """For `centralka hw-test` while the core holds the pins: the LED switched on and off
        (then its pattern again), the button read."""
        out: dict = {"led": None, "button": None}
        if self.led is not None:
            self.led.on()
            lit = self.led.is_lit
            self.led.off()
            out["led"] = {"pin": str(self.led.pin), "followed": bool(lit and not self.led.is_lit)}
            self.pattern = None
            self.update()
        if self.button is not None:
            out["button"] = {"pin": str(self.button.pin), "pressed": bool(self.button.is_pressed)}
        return out

    def status(self) -> dict:
        return {"pattern": self.pattern, "led": self.led is not None, "button": self.button is not None}

    # --- the button ---------------------------------------------------------------------------
    def _from_gpio(self, handler) -> None:
        # The edge's time is taken here, on gpiozero's thread, not when the loop gets to it.
        at = self.services.clock.monotonic()
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(handler, at)

    def _pressed(self, at: float) -> None:
        self._pressed_at = at

    def _released(self, at: float) -> None:
        if self._pressed_at is None:
            return
        held = at - self._pressed_at
        self._pressed_at = None
        if held >= self.very_long_press_s:
            log.info("button held %.1f s: showing the setup code", held)
            self.show_setup_code()
        elif held >= self.long_press_s:
            log.info("button held %.1f s: self-test call", held)
            self.run_selftest()

    def run_selftest(self) -> None:
        selftest = self.services.selftest
        if selftest is None:
            return
        try:
            task = selftest.start(trigger="button")
        except Exception as exc:  # noqa: BLE001 — e.g. one is running already: the LED shows it
            log.warning("button: no self-test call: %s", exc)
            return
        self.pattern = None
        self.update()
        task.add_done_callback(lambda _: self.update())

    def show_setup_code(self) -> None:
        path = setup_code_path(self.services.settings)
        try:
            code = "".join(ch for ch in path.read_text(encoding="utf-8") if ch.isdigit())
        except OSError:
            code = ""
        if code:
            # Also for a technician with a screen attached (the console shows the journal).
            log.warning("setup code: %s", code)
        else:
            log.warning("setup code asked for, but there is none (%s): the box is set up", path)
        if self.led is None:
            return
        if self._showing is not None and not self._showing.done():
            self._showing.cancel()
        self._showing = self.loop.create_task(self._blink_code(code), name="panel-code")

    async def _blink_code(self, code: str):
        unit = self.code_unit_s
        try:
            self.led.off()
            await asyncio.sleep(4 * unit)
            # No code: three quick flashes say "nothing to show".
            for digit in code or "":
                for _ in range(int(digit) or 10):
                    self.led.on()
                    await asyncio.sleep(unit)
                    self.led.off()
                    await asyncio.sleep(unit)
                await asyncio.sleep(4 * unit)
            if not code:
                for _ in range(3):
                    self.led.on()
                    await asyncio.sleep(unit / 3)
                    self.led.off()
                    await asyncio.sleep(unit / 3)
        finally:
            if self._showing is asyncio.current_task():
                self._showing = None
                self.pattern = None
                self.update()
