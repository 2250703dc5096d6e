"""What mirror tests share: a config for two test clusters, a client, a dump of content, waiting until
both sides are equal, and a mirror running in this process for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from etcd_dr.config import DEFAULT_STATE_PREFIX, MirrorConfig
from etcd_dr.etcd import ClientConfig, EtcdClient, prefix_range_end
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.mirror import Mirror


def pair_config(src: EtcdCluster, dst: EtcdCluster, **kw: Any) -> MirrorConfig:
    kw.setdefault("checkpoint_interval", 0.2)
    return MirrorConfig(
        source=ClientConfig.create(src.endpoints, role="source"),
        dest=ClientConfig.create(dst.endpoints, role="destination", flag_prefix="dest-"),
        **kw,
    )


def connect(cluster: EtcdCluster) -> EtcdClient:
    return EtcdClient(ClientConfig.create(cluster.endpoints))


async def dump(
    c: EtcdClient, prefix: bytes = b"", state_prefix: bytes = DEFAULT_STATE_PREFIX
) -> dict[bytes, bytes]:
    """Every key under `prefix` (the whole keyspace by default) but etcd-dr's own, with its value."""
    key, end = (prefix, prefix_range_end(prefix)) if prefix else (b"\0", b"\0")
    return {kv.key: kv.value for kv in (await c.range(key, end)).kvs if not kv.key.startswith(state_prefix)}


def mapped(src: dict[bytes, bytes], prefix: bytes, dest_prefix: bytes) -> dict[bytes, bytes]:
    return {dest_prefix + k[len(prefix) :]: v for k, v in src.items() if k.startswith(prefix)}


async def wait_equal(
    s: EtcdClient, d: EtcdClient, prefix: bytes = b"", dest_prefix: bytes | None = None, timeout: float = 30
) -> None:
    """Until the destination holds exactly the source's keys under `prefix` (mapped); else fail."""
    dp = prefix if dest_prefix is None else dest_prefix
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        want = mapped(await dump(s, prefix), prefix, dp)
        got = await dump(d, dp)
        if want == got:
            return
        if asyncio.get_running_loop().time() > deadline:
            missing = sorted(set(want) - set(got))[:5]
            extra = sorted(set(got) - set(want))[:5]
            diff = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:5]
            raise AssertionError(
                f"not equal after {timeout} s: missing {missing} extra {extra} different {diff}"
            )
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(config: MirrorConfig) -> AsyncIterator[Mirror]:
    """A mirror running in this process while the block runs (cancelled after it)."""
    mirror = Mirror(config)
    task = asyncio.create_task(mirror.run())
    try:
        yield mirror
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(cond: Callable[[], object], timeout: float = 15, what: str = "the condition") -> None:
    """Wait until `cond()` (a value, or a coroutine to await) is true; fail naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        assert time.monotonic() < deadline, f"not reached in {timeout} s: {what}"
        await asyncio.sleep(0.05)
