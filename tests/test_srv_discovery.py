"""--discovery-srv: the source's endpoints from DNS SRV records, as etcdctl finds them, asked of a real
BIND named; and, with --insecure-discovery=false, the source's certificates checked against the
discovery domain (etcdctl's TLS ServerName) on a real TLS etcd."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.bind import BindServer, bind_server, named_unavailable_reason

from etcd_dr.errors import UsageError
from etcd_dr.etcd import ClientConfig, EtcdClient, EtcdError
from etcd_dr.etcdctl_compat import client_options, srv_endpoints
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import make_cluster_tls

Factory = Callable[..., EtcdCluster]


@pytest.fixture(scope="module")
def ns() -> Iterator[BindServer]:
    reason = named_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with bind_server(
        zone="dr.test",
        extra_records=[
            "_etcd-client-ssl._tcp IN SRV 0 0 2379 m1",
            "_etcd-client-ssl._tcp IN SRV 0 0 2379 m2",
            "_etcd-client._tcp IN SRV 0 0 2380 m3",
            "_etcd-client-ssl-east._tcp IN SRV 0 0 4001 m1",
            "_etcd-client-plain._tcp IN SRV 0 0 4002 m3",
            "m1 IN A 127.0.0.1",
            "m2 IN A 127.0.0.1",
            "m3 IN A 127.0.0.1",
        ],
    ) as server:
        yield server


def test_srv_records_as_etcdctl(ns: BindServer, caplog: pytest.LogCaptureFixture) -> None:
    found = srv_endpoints("dr.test", None, nameservers=[ns.server])
    assert sorted(found) == ["http://m3.dr.test:2380", "https://m1.dr.test:2379", "https://m2.dr.test:2379"]
    assert srv_endpoints("dr.test.", "east", nameservers=[ns.server]) == ["https://m1.dr.test:4001"]
    caplog.set_level(logging.WARNING, logger="etcd_dr")
    assert sorted(srv_endpoints("dr.test", None, secure_only=True, nameservers=[ns.server])) == [
        "https://m1.dr.test:2379",
        "https://m2.dr.test:2379",
    ]
    assert "ignoring discovered insecure endpoint http://m3.dr.test:2380" in caplog.text
    # Only http records and --insecure-discovery=false: nothing (etcdctl then uses --endpoints).
    assert srv_endpoints("dr.test", "plain", secure_only=True, nameservers=[ns.server]) == []
    with pytest.raises(UsageError, match=r"--discovery-srv dr\.test: no SRV records found"):
        srv_endpoints("dr.test", "none", nameservers=[ns.server])


async def test_secure_discovery_verifies_the_domain(
    ns: BindServer, etcd_cluster_factory: Factory, tmp_path: Path
) -> None:
    # The members' certificate names only the discovery domain, as etcd's SRV guide has it.
    tls = make_cluster_tls(tmp_path / "tls", hosts=("dr.test", "127.0.0.1"))
    src = etcd_cluster_factory(name="src", tls=tls)
    port = src.endpoints[0].rsplit(":", 1)[1]
    with bind_server(
        zone="srv.test", extra_records=[f"_etcd-client-ssl._tcp IN SRV 0 0 {port} localhost."]
    ) as n2:
        endpoints = srv_endpoints("srv.test", None, secure_only=True, nameservers=[n2.server])
    assert endpoints == [f"https://localhost:{port}"]
    t = tls.client
    kw = {"discovery_srv": "dr.test", "insecure_discovery": False}
    async with EtcdClient(
        ClientConfig.create(endpoints, cacert=t.cacert, cert=t.cert, key=t.key, **client_options(kw))
    ) as c:
        await c.put(b"/srv", b"1")
    # Without the domain as server name, "localhost" is not in the certificate: refused.
    with pytest.raises(EtcdError):
        async with EtcdClient(
            ClientConfig.create(endpoints, cacert=t.cacert, cert=t.cert, key=t.key, dial_timeout=2.0)
        ) as c:
            await c.put(b"/srv", b"2")
