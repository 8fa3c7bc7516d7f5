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
        "callers_limit": box.status()["pools"]["callers_limit"],
        "pool_full": None,
        "trunk": "disabled",
    }


def test_health_says_the_core_is_down(tmp_path):
    settings = load_settings(env={}, control={"socket": str(tmp_path / "nothing.sock")})
    reply = create_app(settings).test_client().get("/health")
    assert reply.status_code == 503
    body = reply.get_json()
    assert body["core"] == "down" and "the core is not running" in body["error"]


def test_centralka_web_serves_the_app_with_waitress(box, workdir):
    """What centralka-web.service runs: `centralka web` on [web] address and port."""
    import json
    import subprocess
    import sys
    import urllib.request

    from .sipkit import ROOT, free_port, wait_for

    port = free_port()
    config = workdir / "web.toml"
    config.write_text(box.config.read_text() + f'\n[web]\naddress = "127.0.0.1"\nport = {port}\n')
    web = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "--config", str(config), "web"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def health():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    return reply.status, json.loads(reply.read()), reply.headers.get("Server")
            except OSError:
                return None

        status, body, server = wait_for(health, 20, "the web UI answering")
        assert (status, body["core"], server) == (200, "up", "centralka")
    finally:
        web.terminate()
        web.wait(10)
