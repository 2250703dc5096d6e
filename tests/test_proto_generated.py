"""The generated protobuf modules are reproducible: regenerating them gives the committed files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_proto.py"
COMMITTED = ROOT / "src" / "etcd_dr" / "etcd" / "_pb"
FILES = ("etcd_dr_v3_pb2.py", "etcd_dr_v3_pb2.pyi")


def test_regenerating_gives_the_committed_files(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools (grpcio-tools, a dev dependency) is not installed: cannot regenerate")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"gen_proto.py failed:\n{proc.stdout}\n{proc.stderr}"
    for name in FILES:
        generated = (out / name).read_bytes()
        committed = (COMMITTED / name).read_bytes()
        assert generated, f"{name}: nothing generated"
        assert generated == committed, (
            f"{name}: regenerated file differs from the committed one; run `python {SCRIPT.name}` "
            "with the pinned grpcio-tools / mypy-protobuf and commit the result"
        )


def test_generated_module_has_the_etcd_api_we_use() -> None:
    # Field numbers are etcd's published API: a wrong one would silently corrupt every request.
    from etcd_dr.etcd._pb import etcd_dr_v3_pb2 as pb

    def numbers(message: type) -> dict[str, int]:
        return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]

    kv = numbers(pb.KeyValue)
    assert kv == {
        "key": 1,
        "create_revision": 2,
        "mod_revision": 3,
        "version": 4,
        "value": 5,
        "lease": 6,
    }
    rng = numbers(pb.RangeRequest)
    assert rng["limit"] == 3 and rng["revision"] == 4 and rng["keys_only"] == 8
    assert rng["count_only"] == 9 and rng["min_mod_revision"] == 10 and rng["max_create_revision"] == 13
    wc = numbers(pb.WatchCreateRequest)
    assert wc["start_revision"] == 3 and wc["progress_notify"] == 4 and wc["prev_kv"] == 6
    assert wc["fragment"] == 8
    wr = numbers(pb.WatchResponse)
    assert wr["compact_revision"] == 5 and wr["cancel_reason"] == 6 and wr["fragment"] == 7
    assert wr["events"] == 11 and wr["canceled"] == 4 and wr["created"] == 3
    assert numbers(pb.Event) == {"type": 1, "kv": 2, "prev_kv": 3}
