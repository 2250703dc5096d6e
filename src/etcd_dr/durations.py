"""Durations as etcdctl and cfssl write them (Go's time.ParseDuration), or plain seconds.

One parser for every time flag of the command line (`--dial-timeout=2s`, `--heartbeat-interval 500ms`,
`--timeout 30`) and for cfssl's "expiry" fields ("438000h"), so the same text means the same time
everywhere.
"""

from __future__ import annotations

import re
from typing import Any

import click

__all__ = ["Duration", "DurationError", "parse_duration"]

# Go's units (time.ParseDuration), in seconds; "µs" is spelled with U+00B5 or U+03BC.
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_PLAIN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


class DurationError(ValueError):
    """Not a duration; the message says what was expected."""


def parse_duration(text: str) -> float:
    """'1m30s', '500ms', '438000h', '-2s' (Go) or '90', '1.5' (seconds) -> seconds.

    Go requires a unit on every number except a lone 0; a plain number is taken as seconds, which is
    what etcd-dr's time flags always took.
    """
    t = text.strip()
    if _PLAIN.fullmatch(t):
        return float(t)
    sign = 1.0
    body = t
    if body[:1] in "+-" and body:
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    total = 0.0
    pos = 0
    for m in _PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise DurationError(
            f"{text!r} is not a duration: use seconds (30) or Go's form (500ms, 2s, 1m30s, 438000h)"
        )
    return sign * total


class Duration(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """A click type for time flags: Go durations or plain seconds, converted to seconds (float)."""

    name = "duration"

    def __init__(
        self,
        *,
        min_seconds: float = 0.0,
        min_open: bool = True,
        max_seconds: float | None = None,
        whole: bool = False,
    ) -> None:
        self.min_seconds = min_seconds
        self.min_open = min_open
        self.max_seconds = max_seconds
        # Whole seconds only (etcd lease TTLs): the value is returned as an int.
        self.whole = whole

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except DurationError as e:
                self.fail(str(e), param, ctx)
        low = self.min_seconds
        if seconds < low or (self.min_open and seconds == low):
            need = f"more than {low:g} s" if self.min_open else f"at least {low:g} s"
            self.fail(f"{value!r} is too short: must be {need}", param, ctx)
        if self.max_seconds is not None and seconds > self.max_seconds:
            self.fail(f"{value!r} is too long: at most {self.max_seconds:g} s", param, ctx)
        if self.whole:
            if seconds != int(seconds):
                self.fail(f"{value!r}: must be whole seconds", param, ctx)
            return int(seconds)
        return seconds

    def __repr__(self) -> str:
        return "DURATION"
