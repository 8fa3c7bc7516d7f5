"""Loading a flow the only way the box allows: parsed, then examined by the flow doctor."""

from __future__ import annotations

from pathlib import Path

from .doctor import assert_flow_ok, check_flow
from .model import Flow, load_flow_file, load_flow_text


def prompt_meter(prompts, flow: Flow):
    """The doctor's ``prompt_duration``: render (or find the upload) and measure the audio."""
    return lambda name: prompts.duration(name, flow.prompts)


def load_checked(text: str, prompts, *, source: str = "flow.toml", lang: str = "pl"):
    """Return ``(flow, warnings)``; raises FlowSyntaxError or FlowRejected."""
    flow = load_flow_text(text, source=source, lang=lang)
    warnings = assert_flow_ok(flow, prompt_meter(prompts, flow), lang=lang)
    return flow, warnings


def examine_file(path: str | Path, prompts, *, lang: str = "pl"):
    """Every finding for a flow file (for ``centralka flow check``); raises FlowSyntaxError."""
    flow = load_flow_file(path, lang=lang)
    return flow, check_flow(flow, prompt_meter(prompts, flow), lang=lang)
