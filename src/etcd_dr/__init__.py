"""etcd-dr: disaster recovery for etcd across sites."""

from .config import MirrorConfig
from .etcd import ClientConfig
from .mirror import Mirror

__all__ = ["ClientConfig", "Mirror", "MirrorConfig"]
__version__ = "0.1.0"
