"""Stage 2 of the data flow: networks, checkpoints, and per-sample gradient maths over a network."""

from keepset.models.checkpoint import load_checkpoint, save_checkpoint, write_safetensors
from keepset.models.fingerprint import model_fingerprint
from keepset.models.networks import (
    ARCHITECTURES, MLP, LinearProbe, SmallCNN, build_model, freeze, model_for_inputs,
)
from keepset.models.two_tower import TwoTowerProbe

__all__ = ["MLP", "SmallCNN", "LinearProbe", "TwoTowerProbe", "ARCHITECTURES", "build_model", "model_for_inputs",
           "freeze", "save_checkpoint", "load_checkpoint", "write_safetensors", "model_fingerprint"]
