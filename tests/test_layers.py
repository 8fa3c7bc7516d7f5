"""The layers of docs/ARCHITECTURE.md, checked on the source: a file that breaks one fails here."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_only_sip_and_the_simulated_phone_import_pjsua2():
    # The simulated phone (appliance/testing/phone.py) is a process of its own with its own endpoint.
    allowed = {PACKAGE / "testing" / "phone.py"}
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in files()
        if "pjsua2" in imports(p) and p.parent != PACKAGE / "sip" and p not in allowed
    ]
    assert not offenders, offenders


def wing_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, at module level) for each import of appliance.testing in a file."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1])
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            names = [name] + [f"{name}.{alias.name}" for alias in node.names]
        else:
            continue
        hit = next((n for n in names if n == "appliance.testing" or n.startswith("appliance.testing.")), None)
        if hit:
            found.append((node.lineno, hit, id(node) not in in_function))
    return found


def test_the_running_box_never_imports_the_testing_wing():
    """appliance/testing/ (emulator, simulated phones, demo) is for `centralka demo` and the tests."""
    offenders = []
    for path in files():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "testing":
            continue
        for line, module, top_level in wing_imports(path):
            # cli.py may import it, but only inside a function (the demo/demo-gsm/phone commands).
            if rel == Path("cli.py") and not top_level:
                continue
            offenders.append(f"appliance/{rel}:{line}: imports {module}")
    assert not offenders, offenders


def test_the_rule_holds_at_run_time():
    # What `centralka run` loads: the core, and the command line with its parser built.
    probe = (
        "import sys, appliance.core, appliance.cli; appliance.cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('appliance.testing')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


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


def test_sip_does_not_import_gsm():
    """The GSM leg gets its call control and its audio through small interfaces (sip.gsmleg)."""
    offenders = [
        str(p.relative_to(PACKAGE)) for p in files("sip") if any(m.startswith("appliance.gsm") for m in imports(p))
    ]
    assert not offenders, offenders


def test_nothing_but_the_entry_points_holds_the_core():
    """Parts reach shared things through appliance.services, never a back reference to Core."""
    entry_points = {PACKAGE / "core.py", PACKAGE / "cli.py", PACKAGE / "testing" / "demo.py"}
    offenders = []
    for path in files():
        if path in entry_points:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if "appliance.core" in imports(path):
            offenders.append(f"{path.relative_to(PACKAGE)}: imports appliance.core")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "core":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: .core")
    assert not offenders, offenders


# A statement starts with one of these and names a clause further on (or is a bare BEGIN/COMMIT).
SQL_WORDS = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|ALTER|DROP|PRAGMA|BEGIN|COMMIT|WITH)\b")
SQL_CLAUSES = re.compile(r"\b(FROM|INTO|SET|TABLE|INDEX|WHERE|IMMEDIATE|TRANSACTION)\b|^\s*[A-Z]+\s*$|^\s*PRAGMA")
DB_METHODS = {"execute", "executemany", "executescript", "query", "rows_where", "delete_where", "table", "conn"}


def sql_outside_store(path: Path) -> list[str]:
    """SQL text (not in docstrings), raw-connection calls and ``db[...]`` tables in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if SQL_WORDS.search(node.value) and re.search(
                r"\b(FROM|INTO|SET|TABLE|WHERE|PRAGMA|BEGIN|COMMIT)\b", node.value
            ):
                found.append(f"{node.lineno}: SQL text {node.value[:40]!r}")
        elif isinstance(node, ast.Attribute) and node.attr in DB_METHODS:
            owner = ast.unparse(node.value)
            if re.search(r"(^|\.)_?(db|conn|database)$", owner):
                found.append(f"{node.lineno}: {owner}.{node.attr}")
        elif isinstance(node, ast.Subscript) and re.search(r"(^|\.)_?db$", ast.unparse(node.value)):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_sql_outside_store():
    """Every query is a named function in appliance/store/ (tested there on a real database)."""
    offenders = [
        f"{p.relative_to(PACKAGE.parent)}:{hit}"
        for p in files() + sorted((PACKAGE.parent / "webui").rglob("*.py"))
        if PACKAGE / "store" not in p.parents
        for hit in sql_outside_store(p)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_sql_check_finds_sql(tmp_path):
    """The check above must be able to fail: each way of writing SQL outside store/ is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        '''"""Docstrings may say SELECT * FROM calls."""
def f(db, self):
    db.execute("UPDATE calls SET outcome = ? WHERE id = ?", [1, 2])
    self.db["alarms"].insert({})
    self._db.conn.close()
    x = f"SELECT id FROM {'calls'}"
''',
        encoding="utf-8",
    )
    hits = sql_outside_store(bad)
    assert [h.split(":")[0] for h in hits if "SQL text" in h] == ["3", "6"]  # (f-string parts are constants too)
    assert any("db.execute" in h for h in hits)
    assert any("self.db[" in h for h in hits)
    assert any("_db.conn" in h for h in hits)
    assert not any(h.startswith("1:") for h in hits)


# Exceptions used for control flow inside one module, never raised to a caller.
CONTROL_FLOW = {"appliance.flow.engine.CallerGone"}


def test_every_error_class_is_in_the_one_error_tree():
    from appliance.errors import CentralkaError

    strays = []
    for path in files():
        if PACKAGE / "testing" in path.parents or path.name == "__main__.py":
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # (pjsua2-free machines do not exist here; say which)
            raise AssertionError(f"{name}: {exc}") from exc
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, BaseException):
                continue
            if not issubclass(cls, CentralkaError) and f"{name}.{cls_name}" not in CONTROL_FLOW:
                strays.append(f"{name}.{cls_name}")
    assert not strays, strays


def test_list_settings_take_comma_text_and_table_settings_refuse_text(tmp_path):
    """A list setting may come as "a, b" (an environment override); a table must be a table."""
    from appliance.errors import ConfigError

    s = load_settings(None, env={}, sms={"allow_countries": "PL, DE"})
    assert s.sms.allow_countries == ["PL", "DE"]
    with pytest.raises(ConfigError, match="mail.teams"):
        load_settings(None, env={}, mail={"teams": "rejestracja@example.org"})
