"""Prometheus metrics and /healthz for a running mirror, read from its MirrorStats at scrape time
(so nothing in the engine knows about Prometheus)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import UsageError
from .mirror.stats import TXN_BUCKETS, MirrorStats

log = logging.getLogger("etcd_dr.metrics")

# etcd_dr_readiness's value per verdict (readiness.SCORE; kept here so that the metrics need not load
# the checks).
READINESS_SCORE = {"ok": 1.0, "warn": 0.5, "fail": 0.0}

# /healthz fails when received source revisions have waited this long, or the mirror has been failing
# this long without progress.
UNHEALTHY_AFTER = 30.0


class MirrorCollector(Collector):
    def __init__(self, stats: MirrorStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield _gauge(
            "etcd_dr_lag_revisions", "Source revisions not yet applied to the destination.", s.lag_revisions
        )
        yield _gauge(
            "etcd_dr_lag_seconds",
            "How long the oldest received, unapplied source revision has waited (0 when caught up).",
            s.lag_seconds,
        )
        yield _gauge(
            "etcd_dr_applied_revision", "Last source revision applied to the destination.", s.applied_revision
        )
        yield _gauge("etcd_dr_source_revision", "Newest source revision seen.", s.source_revision)
        yield _counter(
            "etcd_dr_applied_events", "Source events applied to the destination.", s.applied_events
        )
        yield _counter("etcd_dr_applied_txns", "Destination txns applied.", s.applied_txns)
        yield _counter(
            "etcd_dr_resyncs",
            "Copies made again because the source compacted past the checkpoint.",
            s.resyncs,
        )
        errors = CounterMetricFamily(
            "etcd_dr_errors", "Faults the mirror met and retried, by kind.", labels=["kind"]
        )
        for kind in sorted(
            {"unavailable", "compacted", "fenced", "mass_delete_refused", "nospace", *s.errors}
        ):
            errors.add_metric([kind], s.errors.get(kind, 0))
        yield errors
        yield _gauge(
            "etcd_dr_compaction_headroom_revisions",
            "Revisions between the source's compaction point and the checkpoint; "
            "at 0 a restarted mirror must copy again.",
            s.compaction_headroom,
        )
        hist = HistogramMetricFamily("etcd_dr_txn_duration_seconds", "Duration of destination txns.")
        buckets = [
            (("+Inf" if b == float("inf") else repr(b)), c)
            for b, c in zip(TXN_BUCKETS, s.txn_buckets, strict=True)
        ]
        hist.add_metric([], buckets, s.txn_seconds_sum)
        yield hist
        if s.verify_mismatch is not None:
            yield _gauge(
                "etcd_dr_verify_mismatch", "Differences found by the last periodic verify.", s.verify_mismatch
            )
        yield _gauge(
            "etcd_dr_nospace",
            "1 while etcd's NOSPACE alarm (backend quota full) refuses the mirror's writes: it is paused.",
            1.0 if s.nospace else 0.0,
        )
        yield _gauge("etcd_dr_leases", "Destination leases the mirror keeps alive.", s.leases)
        yield _counter(
            "etcd_dr_foreign_writes",
            "Writes into the mirrored range on the destination that the mirror did not make.",
            s.foreign_writes,
        )
        problems = GaugeMetricFamily(
            "etcd_dr_problem",
            "1 while the standby is known to lack or differ from the source, by kind (as /healthz says).",
            labels=["kind"],
        )
        for kind in sorted({"lease_lost", "verify_differs", "foreign_write", *s.problems}):
            problems.add_metric([kind], 1.0 if kind in s.problems else 0.0)
        yield problems
        if s.last_verify is not None:
            yield _gauge(
                "etcd_dr_verify_last_timestamp_seconds",
                "Unix time the last periodic verify finished.",
                s.last_verify.at,
            )
            yield _gauge(
                "etcd_dr_verify_duration_seconds",
                "How long the last periodic verify took.",
                s.last_verify.seconds,
            )
        if s.readiness:
            yield _gauge(
                "etcd_dr_failover_ready",
                "1 when the last readiness check (every --check-every) found no item failing, else 0.",
                0.0 if "fail" in s.readiness.values() else 1.0,
            )
            items = GaugeMetricFamily(
                "etcd_dr_readiness",
                "The last readiness check, by item: 1 ok, 0.5 warn, 0 fail (`etcd-dr check` says why).",
                labels=["item"],
            )
            for item, level in sorted(s.readiness.items()):
                items.add_metric([item], READINESS_SCORE.get(level, 0.0))
            yield items
            yield _gauge(
                "etcd_dr_readiness_last_timestamp_seconds",
                "Unix time the last readiness check finished.",
                s.readiness_at,
            )
        phase = GaugeMetricFamily(
            "etcd_dr_phase", "The mirror's phase (1 for the current one).", labels=["phase"]
        )
        for p in ("starting", "copy", "replay"):
            phase.add_metric([p], 1.0 if s.phase == p else 0.0)
        yield phase
        read = GaugeMetricFamily(
            "etcd_dr_source_read",
            "How the replay reads the source (1 for the current way): live, or in windows behind its head "
            "while it writes fast (less CPU, up to ~0.1 s more lag).",
            labels=["mode"],
        )
        for mode in ("live", "windows"):
            read.add_metric([mode], 1.0 if s.source_read == mode else 0.0)
        yield read


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def health(stats: MirrorStats) -> tuple[bool, str]:
    if stats.nospace:
        return False, (
            "NOSPACE alarm: the cluster's backend quota is full and its writes are refused; the mirror is "
            "paused until it is compacted, defragmented and the alarm disarmed"
        )
    if stats.problems:
        return False, "the standby lacks or differs from the source: " + "; ".join(
            f"{kind}: {detail}" for kind, detail in sorted(stats.problems.items())
        )
    if stats.phase not in ("copy", "replay"):
        return False, f"not applying (phase {stats.phase})"
    if stats.failing_since is not None and time.monotonic() - stats.failing_since > UNHEALTHY_AFTER:
        return False, f"failing for {time.monotonic() - stats.failing_since:.0f} s without progress"
    if stats.lag_seconds > UNHEALTHY_AFTER:
        return False, f"source revisions have waited {stats.lag_seconds:.0f} s to be applied"
    return True, f"ok: {stats.phase}, applied source revision {stats.applied_revision}"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """Serves /metrics and /healthz on HOST:PORT in a background thread."""

    def __init__(self, addr: str, stats: MirrorStats) -> None:
        host, sep, port = addr.rpartition(":")
        if not sep or not port.isdigit():
            raise UsageError(f"--metrics-addr {addr!r}: expected HOST:PORT")
        host = host.strip("[]") or "0.0.0.0"
        registry = CollectorRegistry()
        registry.register(MirrorCollector(stats))
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                ok, text = health(stats)
                start_response(
                    "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
                )
                return [text.encode() + b"\n"]
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]

        try:
            self._server: WSGIServer = make_server(host, int(port), app, handler_class=_QuietHandler)
        except OSError as e:
            raise UsageError(f"--metrics-addr {addr}: cannot listen: {e.strerror}") from None
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def __enter__(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", *self._server.server_address[:2])
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
