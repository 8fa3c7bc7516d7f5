"""The web UI's health endpoint asks the running core, and says so plainly when it is down."""

from appliance.config import load_settings
from webui import create_app


def test_health_reports_a_running_core(box):
    app = create_app(load_settings(box.config, env={}))
    reply = app.test_client().get("/health")
    assert reply.status_code == 200
    assert reply.get_json() == {
        "ok": True,
        "core": "up",
        "calls_active": 0,
        "call_limit": box.status()["call_limit"],
        "trunk": "disabled",
    }


def test_health_says_the_core_is_down(tmp_path):
    settings = load_settings(env={}, control={"socket": str(tmp_path / "nothing.sock")})
    reply = create_app(settings).test_client().get("/health")
    assert reply.status_code == 503
    body = reply.get_json()
    assert body["core"] == "down" and "the core is not running" in body["error"]
