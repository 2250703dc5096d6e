"""etcd-dr: disaster recovery for etcd across sites."""

# First: gRPC reads its log settings when it is first imported.
from . import _grpc_env  # noqa: F401
from .config import MirrorConfig
from .etcd import ClientConfig
from .mirror import Mirror

__all__ = ["ClientConfig", "Mirror", "MirrorConfig"]
__version__ = "0.1.0"
