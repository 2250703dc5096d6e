"""What the wheel ships: the product only. The test harness (tests/harness) stays out of it, and no
product module imports it or pytest."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def test_the_wheel_packages_hold_no_test_harness() -> None:
    # What pyproject's [tool.setuptools.packages.find] where = ["src"] finds: every directory under src
    # with an __init__.py.
    packages = {".".join(p.parent.relative_to(SRC).parts) for p in SRC.rglob("__init__.py")}
    assert {"etcd_dr", "etcd_dr.local", "etcd_dr.mirror"} <= packages
    assert not {p for p in packages if p.split(".")[-1] in ("testing", "harness", "tests")}


def test_no_product_module_imports_the_harness_or_pytest() -> None:
    offenders: list[str] = []
    for path in (SRC / "etcd_dr").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [
                f"{path.relative_to(SRC)}: {n}"
                for n in names
                if n.split(".")[0] in ("harness", "pytest", "tests") or n.startswith("etcd_dr.testing")
            ]
    assert offenders == []
