"""Sequence batching (``sequence_batching`` in config.pbtxt): stateful models."""

from openeas.server.sequence.config import SequenceSettings, sequence_settings
from openeas.server.sequence.scheduler import SequenceScheduler

__all__ = ["SequenceScheduler", "SequenceSettings", "sequence_settings"]
