"""Logging set-up for the command line: readable lines by default, JSON lines with --log-format json."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

# A warning that repeats with the same text is logged once, then once per this many seconds with a
# count (a source down for an hour would otherwise fill the journal with the same line every 2 s).
DEFAULT_REPEAT_INTERVAL = 300.0
_MAX_KEYS = 1000


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time, so a live progress display can take it over."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


@dataclass
class _Seen:
    shown_at: float
    suppressed: int = 0


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 120:
        return f"{whole} s"
    return f"{whole // 60} min" if whole < 7200 else f"{whole / 3600:.1f} h"


class RepeatFilter(logging.Filter):
    """Collapses repeated warnings and errors: the first is shown, the same one again only once
    `interval` seconds have passed, then with the count of those left out in between.

    "The same" is the same logger, level and message template with the same text arguments; numbers
    (a backoff, a revision) are left out of the comparison, so "retrying in 0.2 s" and "retrying in
    5.0 s" are one warning, while a different error is a warning of its own."""

    def __init__(
        self, interval: float = DEFAULT_REPEAT_INTERVAL, clock: Callable[[], float] = time.monotonic
    ):
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._seen: dict[tuple[object, ...], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.interval <= 0:
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        texts = tuple(str(a) for a in args if not isinstance(a, int | float))
        key = (record.name, record.levelno, str(record.msg), texts)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.shown_at < self.interval:
            seen.suppressed += 1
            return False
        if seen is not None and seen.suppressed:
            # The message is already formatted by now (as a text or JSON line would show it), so the
            # count is appended to the text, not to the template.
            record.msg = (
                f"{record.getMessage()} ({seen.suppressed} more like it in the last "
                f"{_duration(now - seen.shown_at)})"
            )
            record.args = None
        self._seen.pop(key, None)
        if len(self._seen) >= _MAX_KEYS:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = _Seen(now)
        return True


def setup(level: str = "info", fmt: str = "text", repeat_interval: float = DEFAULT_REPEAT_INTERVAL) -> None:
    handler = _StderrHandler()
    handler.addFilter(RepeatFilter(repeat_interval))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own logger is chatty at INFO and says nothing our errors do not.
    logging.getLogger("grpc").setLevel(logging.WARNING)
