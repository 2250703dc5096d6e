"""The mirror's health record on the destination: what a running mirror knows about the standby's
integrity, for `status` (and any other reader) to show without talking to the mirror process.

Written by the mirror (under its lock) every few seconds and whenever a problem appears or clears, next
to its checkpoint; read by `status`. Fields a reader does not know are ignored, so either side can grow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .checkpoint import checkpoint_key


@dataclass(frozen=True)
class VerifyResult:
    at: float  # time.time() the verify finished
    seconds: float  # how long it took
    equal: bool
    keys: int
    differences: int  # missing + extra + different
    source_revision: int
    dest_revision: int


@dataclass(frozen=True)
class HealthRecord:
    updated: float  # time.time() of this write
    # kind -> one line (MirrorStats.problems): the standby is known to lack or differ while non-empty.
    problems: dict[str, str] = field(default_factory=dict)
    verify: VerifyResult | None = None  # the last periodic verify's
    foreign_writes: int = 0  # writes into the mirrored range on the destination not made by the mirror
    last_foreign_key: str = ""  # encode_key form
    last_foreign_revision: int = 0  # destination revision of the last one

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> HealthRecord:
        d: dict[str, Any] = json.loads(data)
        v = d.get("verify")
        return cls(
            updated=float(d["updated"]),
            problems={str(k): str(x) for k, x in dict(d.get("problems") or {}).items()},
            verify=None
            if not v
            else VerifyResult(
                at=float(v["at"]),
                seconds=float(v["seconds"]),
                equal=bool(v["equal"]),
                keys=int(v["keys"]),
                differences=int(v["differences"]),
                source_revision=int(v["source_revision"]),
                dest_revision=int(v["dest_revision"]),
            ),
            foreign_writes=int(d.get("foreign_writes", 0)),
            last_foreign_key=str(d.get("last_foreign_key", "")),
            last_foreign_revision=int(d.get("last_foreign_revision", 0)),
        )


def health_key(
    state_prefix: bytes, source_cluster_id: int, source_prefix: bytes, dest_prefix: bytes
) -> bytes:
    """One health record per mirror pair, beside its checkpoint (state_prefix + "health/" + the pair)."""
    ckpt = checkpoint_key(state_prefix, source_cluster_id, source_prefix, dest_prefix)
    return state_prefix + b"health/" + ckpt[len(state_prefix) + len(b"mirror/") :]
