"""The mirror engine: snapshot copy, watch replay, checkpoint."""

from ..state.records import Checkpoint
from .engine import Mirror, MirrorResult
from .keys import KeyMapper
from .stats import MirrorStats

__all__ = ["Checkpoint", "KeyMapper", "Mirror", "MirrorResult", "MirrorStats"]
