"""Regenerate src/etcd_dr/etcd/_pb from proto/etcd_dr_v3.proto.

Uses the grpcio-tools and mypy-protobuf versions pinned in pyproject.toml's dev extra, so that the
output is byte-for-byte reproducible (tests/test_proto_generated.py checks this).

    python scripts/gen_proto.py            # write the generated modules
    python scripts/gen_proto.py --out DIR  # write them elsewhere (used by the test)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO = "etcd_dr_v3.proto"
OUT = ROOT / "src" / "etcd_dr" / "etcd" / "_pb"
GENERATED = ("etcd_dr_v3_pb2.py", "etcd_dr_v3_pb2.pyi")


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev dependency only

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # protoc_gen_mypy must be on PATH next to this interpreter (it is, inside the venv).
        bindir = Path(sys.executable).parent
        plugin = bindir / "protoc-gen-mypy"
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp}",
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--mypy_out={tmp}",
            PROTO,
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        for name in GENERATED:
            shutil.copyfile(Path(tmp) / name, out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    generate(args.out)


if __name__ == "__main__":
    main()
