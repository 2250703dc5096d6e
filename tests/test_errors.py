"""One error tree: every error etcd-dr raises is an EtcdDrError, drawn in etcd_dr.errors' docstring with its
exit code; the CLI maps errors to exit codes in one place; one Stopped and one signal runner."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import os
import pkgutil
import signal
from pathlib import Path

import pytest

import etcd_dr
from etcd_dr import errors, runner
from etcd_dr.cli import exit_status
from etcd_dr.errors import CheckFailed, EtcdDrError, Stopped, UsageError
from etcd_dr.etcd import EtcdError, Unavailable
from etcd_dr.pki import PkiError

SRC = Path(etcd_dr.__file__).parent

# Exceptions that never leave the module that raises them (each is turned into a tree error there).
INTERNAL = {
    "etcd_dr.durations.DurationError",  # a ValueError for click's parameter types; UsageError above
    "etcd_dr.cfssl.CfsslConfigError",  # pki.py makes it a PkiError
    "etcd_dr.pki_check._Unreachable",  # a report row, never raised out of pki_check
}


def _product_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages([str(SRC)], "etcd_dr."):
        # The local clusters (testing/, moving to local/) raise their own errors, which the demo turns
        # into UsageErrors where it calls them.
        local = info.name.startswith(("etcd_dr.testing", "etcd_dr.local"))
        if local or info.name.endswith("__main__") or "._pb" in info.name:
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return sorted(found.values(), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_error_of_the_product_is_under_one_root() -> None:
    classes = _product_exceptions()
    assert len(classes) > 20, classes  # the walk found the modules
    outside = [
        f"{c.__module__}.{c.__qualname__}"
        for c in classes
        if not issubclass(c, EtcdDrError) and f"{c.__module__}.{c.__qualname__}" not in INTERNAL
    ]
    assert outside == []
    # The etcd client's errors, certificates' and the mirror's lease event are branches of the tree.
    assert issubclass(EtcdError, EtcdDrError) and issubclass(PkiError, EtcdDrError)
    assert issubclass(errors.LeaseLost, EtcdDrError) and not issubclass(errors.LeaseLost, EtcdError)


def test_the_tree_is_drawn_whole_in_the_docstring() -> None:
    doc = errors.__doc__ or ""
    missing = [
        c.__qualname__
        for c in _product_exceptions()
        if issubclass(c, EtcdDrError) and not c.__qualname__.startswith("_") and c.__qualname__ not in doc
    ]
    assert missing == []


def test_errors_module_imports_nothing_of_ours() -> None:
    tree = ast.parse((SRC / "errors.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import)]
    assert all(
        not (isinstance(n, ast.ImportFrom) and (n.level or "etcd_dr" in (n.module or ""))) for n in imports
    )


def test_one_stopped_class() -> None:
    defined = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "class Stopped(" in p.read_text() or "add_signal_handler" in p.read_text()
    ]
    assert sorted(defined) == ["errors.py", "runner.py"]


@pytest.mark.parametrize(
    ("error", "line", "code"),
    [
        (Stopped("SIGINT"), "stopped (SIGINT)", 130),
        (Stopped("SIGTERM"), "stopped (SIGTERM)", 143),
        (Stopped("SIGHUP"), "stopped (SIGHUP)", 129),
        (KeyboardInterrupt(), "stopped (SIGINT)", 130),
        (CheckFailed("differs"), "error: differs", 1),
        (UsageError("--x: bad"), "error: --x: bad", 2),
        (Unavailable("127.0.0.1:1: down"), "error: 127.0.0.1:1: down", 2),
        (PkiError("ca.pem: not PEM"), "error: ca.pem: not PEM", 2),
        (ValueError("oops"), "error: internal error: ValueError: oops", 2),
    ],
)
def test_exit_status_maps_each_error(error: BaseException, line: str, code: int) -> None:
    got_line, got_code = exit_status(error)
    assert got_code == code
    assert got_line.startswith(line)


# ---- the signal runner ----------------------------------------------------------------------------


def _signal_soon(signum: int) -> None:
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signum)


def test_a_signal_cancels_the_coroutine_and_its_cleanup_runs() -> None:
    cleaned: list[str] = []

    async def command() -> str:
        _signal_soon(signal.SIGTERM)
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append("yes")
        return "ran to its end"

    with pytest.raises(Stopped) as info:
        runner.run(command())
    assert (info.value.exit_code, str(info.value), cleaned) == (143, "stopped (SIGTERM)", ["yes"])


def test_the_daemons_sigterm_is_its_normal_end_but_not_sigint() -> None:
    async def daemon(signum: int) -> str:
        _signal_soon(signum)
        await asyncio.sleep(60)
        return "ran to its end"

    assert runner.run(daemon(signal.SIGHUP), stop_ok=True) is None
    with pytest.raises(Stopped, match=r"stopped \(SIGINT\)"):
        runner.run(daemon(signal.SIGINT), stop_ok=True)


def test_repeat_cancel_outlasts_a_swallowed_cancel_and_spares_the_cleanup() -> None:
    steps: list[str] = []

    async def demo() -> None:
        _signal_soon(signal.SIGINT)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            steps.append("swallowed")  # a library that eats the cancel
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        try:
            await asyncio.sleep(60)  # the repeated cancel ends this
        finally:
            runner.cleanup_begins()
            await asyncio.sleep(runner.RETRY * 1.5)  # a cleanup no cancel may cut short
            steps.append("cleaned")

    with pytest.raises(Stopped, match=r"stopped \(SIGINT\)"):
        runner.run(demo(), repeat_cancel=True)
    assert steps == ["swallowed", "cleaned"]
