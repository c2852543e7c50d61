"""Stage 1 of the data flow: samples, labels, sources, splits and label noise."""

from keepset.data.noise import NOISE_KINDS, add_label_noise, flip_permutation
from keepset.data.sampleset import SampleSet
from keepset.data.sources import (
    load_cifar_set, load_digits_set, load_fashion_mnist_set, load_idx_set, load_imagefolder_set,
    load_npz_set, read_idx,
)
from keepset.data.spec import SPEC_HELP, load_spec, spec_file
from keepset.data.split import split_indices

__all__ = [
    "SampleSet", "add_label_noise", "flip_permutation", "NOISE_KINDS", "load_spec", "spec_file", "SPEC_HELP",
    "split_indices", "load_digits_set", "load_idx_set", "load_fashion_mnist_set", "load_cifar_set",
    "load_imagefolder_set", "load_npz_set", "read_idx",
]
