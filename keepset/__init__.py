"""keepset: score how useful every training sample is and decide which samples to keep."""

from keepset._version import __version__
from keepset.data import SampleSet, add_label_noise, load_spec
from keepset.models.mimic import MIMIC_METHODS, mimic_scores
from keepset.selection.clip_select import clip_select
from keepset.selection.stage2 import estimate_quality
from keepset.selection.topk import select_top

__all__ = ["__version__", "SampleSet", "add_label_noise", "load_spec", "mimic_scores", "MIMIC_METHODS",
           "clip_select", "estimate_quality", "select_top"]
