"""Everything etcd-dr keeps under the state prefix: where (layout.py), how it is encoded (records.py,
roles.py, events.py) and how it is read (reader.py: an unreadable record is UnreadableRecord, exit 2).
Nothing outside this package builds a key under the state prefix (docs/architecture.md)."""

from .layout import StateLayout
from .records import Checkpoint, FenceRecord, HealthRecord, decode_key, encode_key

__all__ = ["Checkpoint", "FenceRecord", "HealthRecord", "StateLayout", "decode_key", "encode_key"]
