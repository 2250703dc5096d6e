"""Endpoint parsing: the forms DESIGN.md promises, and clear ConfigErrors for everything else."""

from __future__ import annotations

import pytest

from etcd_dr.etcd import ClientConfig, ConfigError, Endpoint, parse_endpoint, parse_endpoints
from etcd_dr.etcd.endpoints import DEFAULT_PORT


@pytest.mark.parametrize(
    ("text", "host", "port", "scheme", "target"),
    [
        ("127.0.0.1:2379", "127.0.0.1", 2379, None, "127.0.0.1:2379"),
        ("10.0.0.7:32379", "10.0.0.7", 32379, None, "10.0.0.7:32379"),
        ("http://127.0.0.1:2379", "127.0.0.1", 2379, "http", "127.0.0.1:2379"),
        ("https://127.0.0.1:2379", "127.0.0.1", 2379, "https", "127.0.0.1:2379"),
        ("HTTPS://127.0.0.1:2379", "127.0.0.1", 2379, "https", "127.0.0.1:2379"),
        ("http://127.0.0.1:2379/", "127.0.0.1", 2379, "http", "127.0.0.1:2379"),
        ("  127.0.0.1:2379  ", "127.0.0.1", 2379, None, "127.0.0.1:2379"),
        ("[::1]:2379", "::1", 2379, None, "[::1]:2379"),
        ("https://[::1]:2379", "::1", 2379, "https", "[::1]:2379"),
        ("[fe80::1:2]:4001", "fe80::1:2", 4001, None, "[fe80::1:2]:4001"),
        ("[::1]", "::1", DEFAULT_PORT, None, "[::1]:2379"),
        ("::1", "::1", DEFAULT_PORT, None, "[::1]:2379"),
        ("localhost:2379", "localhost", 2379, None, "localhost:2379"),
        ("etcd-0.etcd.svc.cluster.local:2379", "etcd-0.etcd.svc.cluster.local", 2379, None, None),
        ("https://etcd.example.com:443", "etcd.example.com", 443, "https", "etcd.example.com:443"),
        ("etcd_internal.corp:2379", "etcd_internal.corp", 2379, None, "etcd_internal.corp:2379"),
        ("etcd1", "etcd1", DEFAULT_PORT, None, "etcd1:2379"),
        ("http://etcd1", "etcd1", DEFAULT_PORT, "http", "etcd1:2379"),
        ("127.0.0.1", "127.0.0.1", DEFAULT_PORT, None, "127.0.0.1:2379"),
        ("127.0.0.1:1", "127.0.0.1", 1, None, "127.0.0.1:1"),
        ("127.0.0.1:65535", "127.0.0.1", 65535, None, "127.0.0.1:65535"),
    ],
)
def test_parse_valid(text: str, host: str, port: int, scheme: str | None, target: str | None) -> None:
    ep = parse_endpoint(text)
    assert ep == Endpoint(host=host, port=port, scheme=scheme)
    assert ep.target == (target or f"{host}:{port}")


def test_default_port_is_etcds() -> None:
    assert DEFAULT_PORT == 2379


def test_str_and_url() -> None:
    assert str(parse_endpoint("127.0.0.1:2379")) == "127.0.0.1:2379"
    assert str(parse_endpoint("https://127.0.0.1:2379")) == "https://127.0.0.1:2379"
    assert str(parse_endpoint("http://[::1]:2379")) == "http://[::1]:2379"
    # Without a scheme, the URL follows whether TLS is in use.
    assert parse_endpoint("h:1").url(tls=True) == "https://h:1"
    assert parse_endpoint("h:1").url(tls=False) == "http://h:1"
    # A written scheme wins.
    assert parse_endpoint("http://h:1").url(tls=True) == "http://h:1"


def test_comma_list_keeps_order_and_skips_empty_items() -> None:
    eps = parse_endpoints("10.0.0.1:2379, 10.0.0.2:2380,,etcd3,[::1]:2381,")
    assert eps == (
        Endpoint("10.0.0.1", 2379),
        Endpoint("10.0.0.2", 2380),
        Endpoint("etcd3", 2379),
        Endpoint("::1", 2381),
    )


def test_list_of_strings_each_possibly_a_comma_list() -> None:
    eps = parse_endpoints(["https://a:1,https://b:2", "https://c:3"])
    assert [e.target for e in eps] == ["a:1", "b:2", "c:3"]
    assert {e.scheme for e in eps} == {"https"}


def test_scheme_and_bare_may_mix() -> None:
    eps = parse_endpoints("https://a:1,b:2")
    assert [e.scheme for e in eps] == ["https", None]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty endpoint"),
        ("   ", "empty endpoint"),
        ("ftp://127.0.0.1:2379", "scheme must be http or https, not 'ftp'"),
        ("unix://tmp/sock", "scheme must be http or https"),
        ("127.0.0.1:abc", "port 'abc' is not a number"),
        ("127.0.0.1:-1", "port '-1' is not a number"),
        ("127.0.0.1:0", "port 0 is out of range"),
        ("127.0.0.1:65536", "port 65536 is out of range"),
        ("127.0.0.1:99999999", "out of range"),
        ("127.0.0.1:", "missing port after ':'"),
        ("[::1]:", "missing port after"),
        (":2379", "missing host"),
        ("http://:2379", "missing host"),
        ("http://127.0.0.1:2379/v3/kv", "a path is not allowed"),
        ("[::1:2379", "unclosed '['"),
        ("[::1]2379", "expected ':port' after ']'"),
        ("[not-an-ip]:2379", "'not-an-ip' is not an IPv6 address"),
        ("fe80::1::2:2379", "IPv6 addresses go in brackets"),
        ("bad host:2379", "is not a valid host name or IP address"),
        ("-leading.dash:2379", "is not a valid host name"),
        ("host!:2379", "is not a valid host name"),
        ("user@host:2379", "is not a valid host name"),
    ],
)
def test_malformed_endpoint_names_itself(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_endpoint(text)
    msg = str(info.value)
    assert fragment in msg
    if text.strip():
        # The message quotes what the user wrote, so they can find it on their command line.
        assert repr(text.strip()) in msg


def test_malformed_item_in_a_list_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.2:x'.*port 'x' is not a number"):
        parse_endpoints("10.0.0.1:2379,10.0.0.2:x")


@pytest.mark.parametrize("text", ["", ",", " , ,", []])
def test_no_endpoints(text: str | list[str]) -> None:
    with pytest.raises(ConfigError, match="no endpoints given"):
        parse_endpoints(text)


def test_mixed_http_and_https_refused() -> None:
    with pytest.raises(ConfigError, match="mix http and https") as info:
        parse_endpoints("http://a:1,https://b:2")
    assert "http://a:1,https://b:2" in str(info.value)


def test_config_error_is_not_transient() -> None:
    from etcd_dr.etcd import TransientError

    with pytest.raises(ConfigError) as info:
        parse_endpoint("x:y")
    assert not isinstance(info.value, TransientError)


# ---- ClientConfig.create: how endpoints and flags combine -------------------------------------------


def test_config_plain_by_default() -> None:
    c = ClientConfig.create("127.0.0.1:2379,127.0.0.1:22379")
    assert c.tls is None
    assert c.endpoints_text == "127.0.0.1:2379,127.0.0.1:22379"


def test_config_https_scheme_means_tls() -> None:
    c = ClientConfig.create("https://127.0.0.1:2379")
    assert c.tls is not None
    assert c.tls.cacert is None


def test_config_cacert_means_tls() -> None:
    c = ClientConfig.create("127.0.0.1:2379", cacert="/x/ca.pem")
    assert c.tls is not None
    assert str(c.tls.cacert) == "/x/ca.pem"


def test_config_user_colon_password() -> None:
    c = ClientConfig.create("h:1", user="root:s3:cret")
    assert (c.user, c.password) == ("root", "s3:cret")
    c = ClientConfig.create("h:1", user="root", password="pw")
    assert (c.user, c.password) == ("root", "pw")


def test_config_empty_user_refused() -> None:
    with pytest.raises(ConfigError, match="--user is empty"):
        ClientConfig.create("h:1", user="")


def test_config_cert_without_key_refused() -> None:
    from etcd_dr.etcd import TLSConfigError

    with pytest.raises(TLSConfigError, match="--key is missing"):
        ClientConfig.create("h:1", cert="/x/c.pem")
    with pytest.raises(TLSConfigError, match="--cert is missing"):
        ClientConfig.create("h:1", key="/x/k.pem")


def test_config_bad_endpoint_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="'h:0'"):
        ClientConfig.create("h:0")
