"""Training-time stages of Deep Compression for PyTorch models (needs the 'torch' extra)."""
from dcm.compress.prune import Pruner
from dcm.compress.quantize import WeightSharing, share_weights
from dcm.compress.schedule import Gradual, OneShot, Steps
from dcm.compress.sensitivity import sensitivity

__all__ = ["Pruner", "share_weights", "WeightSharing", "OneShot", "Steps", "Gradual", "sensitivity"]
