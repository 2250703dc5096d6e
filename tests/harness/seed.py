"""The procedure etcd-dr replaces (tests/data/etcd-cross-site-dr-procedure.zh.txt, Chinese), read as a
user would read it: its cfssl JSON files and its etcdctl command lines, for tests that run them.

- `seed_json(name)`: "ca-config.json", "ca-csr.json" or "etcd-csr.json" as printed by its `cat`; the
  "# ..." comment line inside etcd-csr.json is dropped (cfssl refuses it too, so a user drops it).
- `seed_commands()`: its `etcdctl` lines, each with the host it runs on (k8s001 = the primary,
  192.168.1.1; k8s002 = the standby, 192.168.1.2), its environment assignments and its arguments. The
  make-mirror line is wrapped in the middle of a port ("https://192.168.1.1:2" / "379 --cacert...")
  in the document: the pieces are joined as they were meant.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = Path(__file__).resolve().parents[1] / "data" / "etcd-cross-site-dr-procedure.zh.txt"

_PROMPT = re.compile(r"^\[root@(?P<host>[\w.-]+) [^\]]*\]\s*#\s*")


@dataclass(frozen=True)
class SeedCommand:
    host: str  # "k8s001" or "k8s002"
    env: dict[str, str]
    argv: list[str]  # argv[0] is "etcdctl"


def seed_text(path: Path = SEED) -> str:
    return path.read_text(encoding="utf-8")


def seed_json(name: str, path: Path = SEED) -> dict[str, Any]:
    """The JSON document the seed shows after `cat .../NAME`, comment lines dropped."""
    lines = seed_text(path).splitlines()
    for i, line in enumerate(lines):
        if re.search(rf"cat\s+\S*\b{re.escape(name)}\s*$", line):
            body: list[str] = []
            depth = 0
            for raw in lines[i + 1 :]:
                text = raw.strip()
                if text.startswith("#"):
                    continue
                body.append(text)
                depth += text.count("{") + text.count("[") - text.count("}") - text.count("]")
                if depth == 0 and body:
                    break
            doc: dict[str, Any] = json.loads("\n".join(body))
            return doc
    raise LookupError(f"{name} is not shown in {path}")


def seed_commands(path: Path = SEED) -> list[SeedCommand]:
    """Every etcdctl command line of the seed, in order."""
    lines = seed_text(path).splitlines()
    out: list[SeedCommand] = []
    i = 0
    while i < len(lines):
        m = _PROMPT.match(lines[i])
        if not m or "etcdctl " not in lines[i]:
            i += 1
            continue
        text = lines[i][m.end() :]
        # A wrapped line continues on the next one (no prompt, not a note or a heading).
        while i + 1 < len(lines) and lines[i + 1] and not lines[i + 1].startswith(("[", "-", "#", "1", "2")):
            i += 1
            text += lines[i]
        words = shlex.split(text)
        env: dict[str, str] = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            k, _, v = words.pop(0).partition("=")
            env[k] = v
        out.append(SeedCommand(m.group("host"), env, words))
        i += 1
    return out


# ---- cfssl 1.2.0 (Debian's golang-cfssl), as the seed runs it -----------------------------------


def cfssl_path() -> str | None:
    import shutil

    if shutil.which("cfssl") and shutil.which("cfssljson"):
        return shutil.which("cfssl")
    return None


def write_seed_json(directory: Path) -> dict[str, Path]:
    """The seed's three JSON files, written into DIR; their paths by name."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("ca-config.json", "ca-csr.json", "etcd-csr.json"):
        p = directory / name
        p.write_text(json.dumps(seed_json(name), indent=2) + "\n", encoding="utf-8")
        out[name] = p
    return out


def cfssl_gencert(directory: Path, *, profile: str = "kubernetes") -> None:
    """The seed's two cfssl lines in DIR (which holds its JSON files): ca.pem, ca-key.pem, etcd.pem,
    etcd-key.pem. cfssl logs on stderr; only stdout goes to cfssljson."""
    import subprocess

    def run(gencert: list[str], bare: str) -> None:
        made = subprocess.run(
            ["cfssl", "gencert", *gencert], cwd=directory, capture_output=True, check=True, timeout=60
        )
        subprocess.run(
            ["cfssljson", "-bare", bare], cwd=directory, input=made.stdout, capture_output=True, check=True
        )

    run(["-initca", "ca-csr.json"], "ca")
    run(
        [
            "-ca=ca.pem",
            "-ca-key=ca-key.pem",
            "-config=ca-config.json",
            f"-profile={profile}",
            "etcd-csr.json",
        ],
        "etcd",
    )
