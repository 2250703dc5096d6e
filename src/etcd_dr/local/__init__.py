"""Local etcd for the demo (and the tests and benchmarks): etcd binaries found on this machine, real
etcd clusters on loopback ports, TLS material for them, an acknowledged writer, and the one registry
of live local resources (resources.py) that ends what was started here, by PID, at exit."""
