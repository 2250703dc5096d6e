"""Which source keys are mirrored, and where they land on the destination (make-mirror's mapping)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..etcd import prefix_range_end

if TYPE_CHECKING:
    from ..config import MirrorConfig

# The whole keyspace as a range: every key >= "\0" (etcd keys are never empty).
ALL_KEYS = (b"\0", b"\0")


def key_range(prefix: bytes) -> tuple[bytes, bytes]:
    return (prefix, prefix_range_end(prefix)) if prefix else ALL_KEYS


def ranges_overlap(a: tuple[bytes, bytes], b: tuple[bytes, bytes]) -> bool:
    """Whether two [key, range_end) ranges share a key; range_end b"\\0" means "to the end"."""

    def end(r: tuple[bytes, bytes]) -> bytes | None:
        return None if r[1] == b"\0" else r[1]

    a_end, b_end = end(a), end(b)
    return (a_end is None or b[0] < a_end) and (b_end is None or a[0] < b_end)


@dataclass(frozen=True)
class KeyMapper:
    """Maps a source key under `prefix` to `dest_prefix` + the rest of the key.

    `excludes` are source prefixes never mirrored; `protected` are destination prefixes never written or
    removed (etcd-dr's own state prefix at the destination).
    """

    prefix: bytes
    dest_prefix: bytes
    excludes: tuple[bytes, ...] = ()
    protected: tuple[bytes, ...] = ()
    # Source keys matching this are never mirrored (and their destination images left alone).
    ignore: re.Pattern[bytes] | None = None

    @classmethod
    def create(
        cls,
        prefix: bytes,
        dest_prefix: bytes | None,
        excludes: Sequence[bytes],
        state_prefix: bytes,
        ignore_regex: str | None = None,
    ) -> KeyMapper:
        dest = prefix if dest_prefix is None else dest_prefix
        src_excludes = tuple(sorted({*excludes, state_prefix}))
        # Destination images of the source excludes are left alone too (neither written nor removed).
        images = [dest + e[len(prefix) :] for e in src_excludes if e.startswith(prefix)]
        protected = tuple(sorted({state_prefix, *images}))
        ignore = re.compile(ignore_regex.encode("utf-8", "surrogateescape")) if ignore_regex else None
        return cls(prefix, dest, src_excludes, protected, ignore)

    @classmethod
    def from_config(cls, config: MirrorConfig) -> KeyMapper:
        return cls.create(
            config.prefix,
            config.effective_dest_prefix,
            config.excludes,
            config.state_prefix,
            config.ignore_keys_regex,
        )

    @property
    def source_range(self) -> tuple[bytes, bytes]:
        return key_range(self.prefix)

    @property
    def dest_range(self) -> tuple[bytes, bytes]:
        return key_range(self.dest_prefix)

    def to_dest(self, key: bytes) -> bytes | None:
        """The destination key for a source key, or None when the key is not mirrored."""
        if not key.startswith(self.prefix):
            return None
        for e in self.excludes:
            if key.startswith(e):
                return None
        if self.ignore is not None and self.ignore.search(key):
            return None
        return self.dest_prefix + key[len(self.prefix) :]

    def dest_is_protected(self, dest_key: bytes) -> bool:
        if any(dest_key.startswith(p) for p in self.protected):
            return True
        # The destination image of an ignored source key is left alone as well.
        return (
            self.ignore is not None
            and dest_key.startswith(self.dest_prefix)
            and self.ignore.search(self.prefix + dest_key[len(self.dest_prefix) :]) is not None
        )
