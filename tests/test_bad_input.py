"""Bad input (issue 8, item 4), through the real command line: every case exits 2 with exactly one final
`etcd-dr: error: ...` line naming what is wrong (the flag, the file, the endpoint), no traceback, and
nothing written to either cluster (their revisions do not move).

What test_cli.py already covers is not repeated here: a wrong --cacert for the source, a missing or
garbage --cacert / --dest-cacert, a wrong source password, a same-cluster mirror, an unreachable
destination with --once, `http://:12`, `ftp://`, --max-txn-ops 1, --cert without --key. Topology files
with mistakes are in test_render.py; the render cases below are the file-level ones it does not have.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness.clirun import assert_refused, etcd_dr, etcd_dr_sync, tls_flags

from etcd_dr.local.binaries import EtcdBinaries
from etcd_dr.local.cluster import EtcdCluster
from etcd_dr.local.tls import ClusterTLS, TLSFiles, make_cluster_tls


def expired_client(ca_dir: Path) -> TLSFiles:
    """A client certificate signed by the CA in `ca_dir` that expired two days ago."""
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired-client")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = ca_dir / "expired.pem", ca_dir / "expired-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return TLSFiles(ca_dir / "ca.pem", cert_path, key_path)


@dataclass
class Sites:
    src: EtcdCluster  # TLS, its own CA (a)
    dst: EtcdCluster  # TLS, another CA (b)
    auth: EtcdCluster  # plain HTTP with etcd auth: root / rootpw
    a: ClusterTLS
    b: ClusterTLS
    expired_a: TLSFiles
    expired_b: TLSFiles
    files: Path  # odd files: a directory, a text file, an empty file

    @property
    def s(self) -> list[str]:
        """The source, correctly given."""
        c = self.a.client
        return ["--endpoints", self.src.endpoints[0], *tls_flags("", c.cacert, c.cert, c.key)]

    @property
    def d(self) -> list[str]:
        """DEST and its flags, correctly given."""
        c = self.b.client
        return [self.dst.endpoints[0], *tls_flags("dest-", c.cacert, c.cert, c.key)]


@pytest.fixture(scope="module")
def sites(etcd_bin: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    d = tmp_path_factory.mktemp(f"bad-input-{etcd_bin.minor}")
    a, b = make_cluster_tls(d / "a", name="site-a"), make_cluster_tls(d / "b", name="site-b")
    files = d / "files"
    files.mkdir()
    (files / "text.pem").write_text("this is not PEM\n")
    (files / "empty.pem").write_bytes(b"")
    clusters = [
        EtcdCluster(etcd_bin, name="src", tls=a),
        EtcdCluster(etcd_bin, name="dst", tls=b),
        EtcdCluster(etcd_bin, name="auth", auth=("root", "rootpw")),
    ]
    try:
        for c in clusters:
            c.start()
        src, dst, auth = clusters
        src.etcdctl("put", "/app/a", "1")  # something a mirror would copy
        yield Sites(src, dst, auth, a, b, expired_client(d / "a"), expired_client(d / "b"), files)
    finally:
        for c in clusters:
            c.stop()


def revision(cluster: EtcdCluster) -> int:
    status = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    return int(status[0]["Status"]["header"]["revision"])


def closed_port() -> str:
    """127.0.0.1:PORT where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# Each case: the argv (from the sites) and what the error line must name.
Case = Callable[[Sites], tuple[list[str], list[str]]]

CASES: dict[str, Case] = {
    # ---- certificates
    "expired-source-client-cert": lambda x: (
        ["mirror", *x.d, "--endpoints", x.src.endpoints[0], "--once",
         *tls_flags("", x.a.ca, x.expired_a.cert, x.expired_a.key)],
        ["source endpoint", x.src.hostports[0], "--cert", str(x.expired_a.cert)],
    ),
    "expired-dest-client-cert": lambda x: (
        ["verify", x.dst.endpoints[0], *x.s, *tls_flags("dest-", x.b.ca, x.expired_b.cert, x.expired_b.key)],
        ["destination endpoint", x.dst.hostports[0], "--dest-cert", str(x.expired_b.cert)],
    ),
    "dest-client-cert-of-another-ca": lambda x: (
        ["mirror", x.dst.endpoints[0], *x.s, "--once",
         *tls_flags("dest-", x.b.ca, x.a.client.cert, x.a.client.key)],
        ["destination endpoint", "rejected the client certificate", "--dest-cert", str(x.a.client.cert)],
    ),
    "source-client-cert-of-another-ca": lambda x: (
        ["status", *x.d, "--endpoints", x.src.endpoints[0],
         *tls_flags("", x.a.ca, x.b.client.cert, x.b.client.key)],
        ["source endpoint", "--cert", str(x.b.client.cert)],
    ),
    "cert-key-mismatch": lambda x: (
        ["mirror", *x.d, "--endpoints", x.src.endpoints[0], "--once",
         *tls_flags("", x.a.ca, x.a.client.cert, x.b.client.key)],
        ["--cert", str(x.a.client.cert), "does not match", "--key", str(x.b.client.key)],
    ),
    "dest-cert-key-mismatch": lambda x: (
        ["switchover", x.dst.endpoints[0], *x.s,
         *tls_flags("dest-", x.b.ca, x.b.client.cert, x.a.client.key)],
        ["--dest-cert", "does not match", "--dest-key", str(x.a.client.key)],
    ),
    # Tests run as root, which chmod 000 cannot stop: a key that cannot be read as a key instead.
    "key-is-a-directory": lambda x: (
        ["mirror", *x.d, "--endpoints", x.src.endpoints[0], "--once",
         *tls_flags("", x.a.ca, x.a.client.cert, x.files)],
        ["--key", str(x.files), "directory"],
    ),
    "key-is-a-certificate": lambda x: (
        ["verify", *x.d, "--endpoints", x.src.endpoints[0],
         *tls_flags("", x.a.ca, x.a.client.cert, x.a.client.cert)],
        ["--key", str(x.a.client.cert), "private key"],
    ),
    "dest-key-not-pem": lambda x: (
        ["mirror", x.dst.endpoints[0], *x.s, "--once",
         *tls_flags("dest-", x.b.ca, x.b.client.cert, x.files / "text.pem")],
        ["--dest-key", str(x.files / "text.pem")],
    ),
    "dest-cert-empty-file": lambda x: (
        ["status", x.dst.endpoints[0], *x.s,
         *tls_flags("dest-", x.b.ca, x.files / "empty.pem", x.b.client.key)],
        ["--dest-cert", str(x.files / "empty.pem")],
    ),
    "dest-key-missing-file": lambda x: (
        ["mirror", x.dst.endpoints[0], *x.s, "--once",
         *tls_flags("dest-", x.b.ca, x.b.client.cert, x.files / "nope-key.pem")],
        ["--dest-key", str(x.files / "nope-key.pem"), "no such file"],
    ),
    "no-client-cert-for-a-tls-cluster": lambda x: (
        ["mirror", *x.d, "--endpoints", x.src.endpoints[0], "--cacert", str(x.a.ca), "--once"],
        ["source endpoint", "--cert and --key"],
    ),
    "https-without-cacert": lambda x: (
        ["verify", *x.d, "--endpoints", x.src.endpoints[0]],
        ["source endpoint", x.src.hostports[0], "--cacert"],
    ),
    # ---- users and passwords
    "wrong-dest-password": lambda x: (
        ["mirror", x.auth.endpoints[0], *x.s, "--dest-user", "root:wrong", "--once"],
        ["destination endpoint", "authentication failed", "'root'", "--dest-user"],
    ),
    "wrong-dest-password-flag": lambda x: (
        ["switchover", x.auth.endpoints[0], *x.s, "--dest-user", "root", "--dest-password", "nope"],
        ["destination endpoint", "authentication failed", "'root'"],
    ),
    "unknown-source-user": lambda x: (
        ["mirror", *x.d, "--endpoints", x.auth.endpoints[0], "--user", "nobody:pw", "--once"],
        ["source endpoint", "authentication failed", "'nobody'", "--user"],
    ),
    "user-on-a-cluster-without-auth": lambda x: (
        ["mirror", *x.d, *x.s, "--dest-user", "root:rootpw", "--once"],
        ["destination endpoint", "authentication is not enabled", "--dest-user"],
    ),
    "password-without-user": lambda x: (
        ["mirror", *x.d, *x.s, "--dest-password", "rootpw", "--once"],
        ["--dest-password", "without --dest-user"],
    ),
    "empty-user": lambda x: (
        ["verify", *x.d, *x.s, "--dest-user", ""],
        ["--dest-user is empty"],
    ),
    # ---- unreachable endpoints
    "unreachable-source-once": lambda x: (
        ["mirror", *x.d, "--endpoints", (p := closed_port()), "--once", "--timeout", "1"],
        ["source", p, "--timeout"],
    ),
    "unreachable-dest-verify": lambda x: (
        ["verify", (p := closed_port()), *x.s],
        ["destination endpoint", p],
    ),
    # (status with a site down is no error: it reports a DOWN row, test_status_weather.py)
    "status-max-lag-not-a-duration": lambda x: (["status", *x.d, *x.s, "--max-lag", "soon"], ["--max-lag"]),
    "checkpoints-force-without-remove": lambda x: (["checkpoints", *x.d, "--force"], ["--force", "--remove"]),
    "checkpoints-remove-unknown": lambda x: (["checkpoints", *x.d, "--remove", "abc"], ["--remove", "abc"]),
    "unreachable-dest-switchover": lambda x: (
        ["switchover", (p := closed_port()), *x.s, "--dial-timeout", "1"],
        ["destination endpoint", p],
    ),
    # ---- malformed endpoints
    "source-port-out-of-range": lambda x: (
        ["mirror", *x.d, "--endpoints", "127.0.0.1:99999"],
        ["--endpoints", "127.0.0.1:99999", "out of range"],
    ),
    "dest-port-not-a-number": lambda x: (
        ["verify", "127.0.0.1:abc", *x.s],
        ["DEST", "127.0.0.1:abc"],
    ),
    "empty-dest": lambda x: (["mirror", "", *x.s], ["DEST", "no endpoints"]),
    "dest-only-commas": lambda x: (["status", " , ", *x.s], ["DEST", "no endpoints"]),
    "empty-source-endpoints": lambda x: (
        ["switchover", *x.d, "--endpoints", ""],
        ["--endpoints", "no endpoints"],
    ),
    "dest-scheme-without-host": lambda x: (["mirror", "http://", *x.s], ["DEST", "http://", "host"]),
    "dest-https-without-host": lambda x: (["verify", "https://:2379", *x.s], ["DEST", "https://:2379"]),
    "endpoints-with-spaces": lambda x: (
        ["mirror", *x.d, "--endpoints", "127.0.0.1:1 127.0.0.1:2"],
        ["--endpoints", "127.0.0.1:1 127.0.0.1:2"],
    ),
    "mixed-http-and-https": lambda x: (
        ["mirror", *x.d, "--endpoints", f"{x.src.endpoints[0]},http://127.0.0.1:1"],
        ["--endpoints", "http"],
    ),
    # ---- malformed flags (with good clusters: a mirror that ran anyway would write)
    "rev-0": lambda x: (["mirror", *x.d, *x.s, "--rev", "0"], ["--rev 0"]),
    "rev-negative": lambda x: (["mirror", *x.d, *x.s, "--rev", "-3"], ["--rev -3"]),
    "rev-not-a-number": lambda x: (["mirror", *x.d, *x.s, "--rev", "ten"], ["--rev"]),
    "empty-exclude": lambda x: (["mirror", *x.d, *x.s, "--exclude", "", "--once"], ["--exclude"]),
    "empty-exclude-verify": lambda x: (["verify", *x.d, *x.s, "--exclude", ""], ["--exclude"]),
    "empty-ordered-prefix": lambda x: (
        ["mirror", *x.d, *x.s, "--ordered-prefix", "", "--once"],
        ["--ordered-prefix"],
    ),
    "ordered-prefix-outside-prefix": lambda x: (
        ["mirror", *x.d, *x.s, "--prefix", "/app/", "--ordered-prefix", "/locks/", "--once"],
        ["--ordered-prefix '/locks/'", "outside --prefix"],
    ),
    "max-txn-ops-0": lambda x: (["mirror", *x.d, *x.s, "--max-txn-ops", "0"], ["--max-txn-ops 0"]),
    "inflight-0": lambda x: (["mirror", *x.d, *x.s, "--inflight", "0", "--once"], ["--inflight"]),
    "reason-without-take-over": lambda x: (
        ["mirror", *x.d, *x.s, "--reason", "why", "--once"],
        ["--reason", "--take-over"],
    ),
    "max-delete-ratio-2": lambda x: (
        ["mirror", *x.d, *x.s, "--max-delete-ratio", "2"],
        ["--max-delete-ratio"],
    ),
    "lock-ttl-0": lambda x: (["mirror", *x.d, *x.s, "--lock-ttl", "0"], ["--lock-ttl"]),
    "heartbeat-interval-bogus": lambda x: (
        ["mirror", *x.d, *x.s, "--heartbeat-interval", "soon"],
        ["--heartbeat-interval", "soon"],
    ),
    "verify-every-negative": lambda x: (["mirror", *x.d, *x.s, "--verify-every", "-1m"], ["--verify-every"]),
    "metrics-addr-no-port": lambda x: (
        ["mirror", *x.d, *x.s, "--metrics-addr", "nonsense"],
        ["--metrics-addr", "nonsense"],
    ),
    "metrics-addr-taken": lambda x: (
        ["mirror", *x.d, *x.s, "--metrics-addr", x.src.hostports[0]],
        ["--metrics-addr", x.src.hostports[0], "in use"],
    ),
    "empty-state-prefix": lambda x: (["mirror", *x.d, *x.s, "--state-prefix", ""], ["--state-prefix"]),
    "bad-ignore-keys-regex": lambda x: (
        ["mirror", *x.d, *x.s, "--ignore-keys-regex", "(", "--once"],
        ["--ignore-keys-regex"],
    ),
    "leases-bogus": lambda x: (["mirror", *x.d, *x.s, "--leases", "sometimes"], ["--leases", "sometimes"]),
    "timeout-0": lambda x: (["mirror", *x.d, *x.s, "--once", "--timeout", "0"], ["--timeout"]),
    "dial-timeout-negative": lambda x: (["verify", *x.d, *x.s, "--dial-timeout", "-1"], ["--dial-timeout"]),
    "command-timeout-0": lambda x: (["status", *x.d, *x.s, "--command-timeout", "0"], ["--command-timeout"]),
    "dest-prefix-and-no-dest-prefix": lambda x: (
        ["verify", *x.d, *x.s, "--dest-prefix", "/b/", "--no-dest-prefix"],
        ["--dest-prefix", "--no-dest-prefix"],
    ),
    "unknown-flag-switchover": lambda x: (["switchover", *x.d, *x.s, "--frobnicate"], ["--frobnicate"]),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
async def test_refused_and_nothing_written(sites: Sites, case: str) -> None:
    args, needles = CASES[case](sites)
    before = (revision(sites.src), revision(sites.dst), revision(sites.auth))
    run = await etcd_dr(*map(str, args), timeout=45)
    assert_refused(run, *needles)
    assert (revision(sites.src), revision(sites.dst), revision(sites.auth)) == before, "something was written"


# ---- `etcd-dr render` with a topology file it cannot read (its contents: test_render.py)


def test_render_refuses_files_it_cannot_read(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "sites:\n  a:\n    role: primary\n    members: [{name: m, host: 10.0.0.1}]\n"
        "  b:\n    members: [{name: n, host: 10.0.0.2}]\n"
    )
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"sites:\n  a: {role: primary, members: [{name: m\xe9, host: h}]}\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    out_file = tmp_path / "out-is-a-file"
    out_file.write_text("")
    out = tmp_path / "out"
    cases = [
        ([str(latin1), "--out", str(out)], [str(latin1), "UTF-8"]),
        ([str(binary), "--out", str(out)], [str(binary), "UTF-8"]),
        ([str(tmp_path), "--out", str(out)], [str(tmp_path), "directory"]),
        ([str(loop), "--out", str(out)], [str(loop), "cannot read"]),
        ([str(good), "--out", str(out_file)], ["--out", str(out_file), "not a directory"]),
        ([str(good)], ["--out"]),
    ]
    for args, needles in cases:
        assert_refused(etcd_dr_sync("render", *args), *needles)
        assert not out.exists()
    assert out_file.read_text() == ""
