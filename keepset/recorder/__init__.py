"""The recorder stage: a streaming, resumable log of per-sample dynamics keyed by sample id, and
per-sample aggregates computed from it out of core.

The recorder is a sink: training code writes into it and every later stage reads it; it imports only
from ``keepset.io`` and the id helpers.
"""

from keepset.recorder.aggregate import IdIndex, dense_by_epoch, index_of, per_sample, target_ids, unique_ids
from keepset.recorder.log import DynamicsRecorder

__all__ = ["DynamicsRecorder", "IdIndex", "unique_ids", "index_of", "per_sample", "target_ids", "dense_by_epoch"]
