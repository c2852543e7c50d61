"""keepset: score how useful every training sample is and decide which samples to keep.

The public API, loaded on first use (``import keepset`` itself imports neither torch nor numpy):

- ``GradMimic``: Grad-Mimic for any PyTorch training loop (``gm.loss(model, x, y, ids)``).
- ``mimic_scores``: the Mimic Score of every sample of a batch.
- ``filter_samples``: the ``keepset filter`` workflow on a ``SampleSet`` (Stage 1 + 2, quality check).
- ``filter_pairs``: the same on an image-text pool (``keepset.data.pairs.load_pairs``) by contrastive probing.
- ``DynamicsRecorder``, ``stage2_filter``, ``estimate_quality``: recorded dynamics and the Stage 2 filter.
- ``SampleSet``, ``load_spec``, ``add_label_noise``: data; ``clip_select``, ``select_top``: selection.
- ``issues``: the issues table of a run folder (one row per sample, worst first; like cleanlab's Datalab).
"""

from keepset._version import __version__

_EXPORTS = {
    "GradMimic": "keepset.training.gradmimic",
    "fit": "keepset.training.loop",
    "mimic_scores": "keepset.models.mimic",
    "MIMIC_METHODS": "keepset.models.mimic",
    "filter_samples": "keepset.workflows.filter",
    "FilterOptions": "keepset.workflows.filter",
    "filter_pairs": "keepset.workflows.filter_pairs",
    "PairFilterOptions": "keepset.workflows.filter_pairs",
    "DynamicsRecorder": "keepset.recorder.log",
    "stage2_filter": "keepset.selection.stage2",
    "estimate_quality": "keepset.selection.stage2",
    "SampleSet": "keepset.data.sampleset",
    "load_spec": "keepset.data.spec",
    "add_label_noise": "keepset.data.noise",
    "clip_select": "keepset.selection.clip_select",
    "select_top": "keepset.selection.topk",
    "issues": "keepset.report.issues",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keepset' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
