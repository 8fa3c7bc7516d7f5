"""Centralka's web UI (Flask, served by waitress).

For now only the health endpoint a technician or a monitor can poll; configuration, reports and
the first-boot setup (no default password) come with their issues.
"""

from __future__ import annotations

from flask import Flask, jsonify

from appliance.config import load_settings
from appliance.errors import CoreNotRunning


def create_app(settings=None, **overrides) -> Flask:
    app = Flask(__name__)
    app.config.update(overrides)
    app.extensions["centralka.settings"] = settings or load_settings()

    @app.get("/health")
    def health():
        from appliance.cli import ask_core

        try:
            status = ask_core(app.extensions["centralka.settings"], "status")["status"]
        except CoreNotRunning as exc:
            return jsonify({"ok": False, "core": "down", "error": str(exc)}), 503
        trunk = status["trunk"]["state"]
        pools = status.get("pools") or {}
        return jsonify(
            {
                "ok": True,
                "core": "up",
                "calls_active": status["calls_active"],
                "call_limit": status["call_limit"],
                # Callers the box takes at once (the tightest pool of the build decides), and the
                # pool that would turn the next one away now (null: there is room).
                "callers_limit": pools.get("callers_limit"),
                "pool_full": pools.get("full"),
                "trunk": trunk,
            }
        )

    return app
