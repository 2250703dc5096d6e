"""The test-only harness, shared by tests/ and bench/ (not shipped in the wheel): a TCP fault proxy,
two sites as network namespaces, a real BIND, the mirror as a subprocess, CLI runs, workloads and the
history checker. pytest finds it through `pythonpath` in pyproject.toml, bench/__init__.py puts tests/
on sys.path for `python -m bench.x`. Local etcd clusters and TLS material are product code, in
etcd_dr.local."""
