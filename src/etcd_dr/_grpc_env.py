"""Silence gRPC's C-core log before grpc is imported (etcd_dr/__init__.py imports this first).

The C core writes its own lines straight to file descriptor 2 (``E1205 ... ssl_transport_security.cc:...
Handshake failed``, ``Corruption detected``); every one of those failures also reaches us as an error
that we map to a plain message, so its lines only bury ours. The core reads GRPC_VERBOSITY and
GRPC_TRACE once, when it starts, so they must be set before the first ``import grpc``.
ETCD_DR_GRPC_VERBOSITY (e.g. ``debug``) brings them back when a gRPC problem must be looked into.
"""

from __future__ import annotations

import os


def quiet_grpc() -> None:
    wanted = os.environ.get("ETCD_DR_GRPC_VERBOSITY")
    if wanted:
        os.environ["GRPC_VERBOSITY"] = wanted
        return
    os.environ["GRPC_VERBOSITY"] = "NONE"
    os.environ.pop("GRPC_TRACE", None)


quiet_grpc()
