"""The layers of docs/ARCHITECTURE.md, checked on the source: a file that breaks one fails here.
(Issue 10 tightens these as the back references to Core and stray SQL go.)"""

from __future__ import annotations

import ast
from pathlib import Path

from appliance.config import load_settings

PACKAGE = Path(__file__).resolve().parent.parent / "appliance"


def imports(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def files(sub: str = "") -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def test_only_sip_imports_pjsua2():
    offenders = [str(p.relative_to(PACKAGE)) for p in files() if "pjsua2" in imports(p) and p.parent.name != "sip"]
    assert not offenders, offenders


def test_store_imports_neither_sip_nor_gsm():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in files("store")
        if any(m.startswith(("appliance.sip", "appliance.gsm")) for m in imports(p))
    ]
    assert not offenders, offenders


def test_the_modem_is_named_through_the_settings_environment_overrides(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[modem]\ndevice = "/dev/ttyUSB9"\n', encoding="utf-8")
    assert load_settings(cfg, env={}).modem.device == "/dev/ttyUSB9"
    env = {"CENTRALKA_MODEM": "/dev/ttyUSB2,/dev/ttyUSB1"}
    assert load_settings(cfg, env=env).modem.device == "/dev/ttyUSB2,/dev/ttyUSB1"
