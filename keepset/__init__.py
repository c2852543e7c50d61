"""keepset: score how useful every training sample is and decide which samples to keep."""

from keepset._version import __version__
from keepset.data import SampleSet, add_label_noise, load_spec
from keepset.models.mimic import MIMIC_METHODS, mimic_scores

__all__ = ["__version__", "SampleSet", "add_label_noise", "load_spec", "mimic_scores", "MIMIC_METHODS"]
