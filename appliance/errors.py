"""One error tree for Centralka.

Each error also inherits the built-in type it is closest to, so callers that only know the
built-ins still catch it. Vendor errors (pjsua2, sqlite, serial) are converted at the boundary
with ``raise ... from exc``.
"""


class CentralkaError(Exception):
    "Base class of every error Centralka raises on purpose."


class ConfigError(CentralkaError, ValueError):
    "A setting is missing or has a value that cannot be used."


class FlowError(CentralkaError, ValueError):
    "A call flow cannot be used."


class FlowSyntaxError(FlowError):
    "A flow file does not parse; carries the line number."

    def __init__(self, message, line=None, source=None):
        self.line = line
        self.source = source
        where = source or "flow"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")
        self.detail = message


class FlowRejected(FlowError):
    "The flow doctor found at least one error; ``findings`` lists all of them."

    def __init__(self, findings):
        self.findings = list(findings)
        errors = [f for f in self.findings if f.level == "error"]
        super().__init__("; ".join(f.message for f in errors) or "flow rejected")


class PromptError(CentralkaError, ValueError):
    "A prompt cannot be rendered or converted."


class SipError(CentralkaError, RuntimeError):
    "The SIP stack refused an operation."


class CallLimitReached(SipError):
    "The pjsua2 build cannot hold another call."


class StoreError(CentralkaError, RuntimeError):
    "The database cannot be read or written."


class CoreNotRunning(CentralkaError, ConnectionError):
    "The command needs the running core and cannot reach it."
