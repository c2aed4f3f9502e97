"""Deep Compression inside ``Trainer.fit``: a PyTorch Lightning callback (the ``lightning`` extra).

Epochs run in three phases, configured like the rest of ``dcm.compress``:

    [0, dense_epochs)                     ordinary training (skip it for an already trained model)
    [dense_epochs, + prune_epochs)        pruning with retraining: ``Pruner.step()`` at the start of
                                          each of the first ``prune_steps`` epochs (Gradual schedule)
    [dense_epochs + prune_epochs, end)    trained quantization: k-means weight sharing, then only
                                          the centroids are fine-tuned

At the end of ``fit`` the weights are baked (exact zeros, at most 2^bits values per layer) and,
with ``export_to``, written as a .dcm with the matching code widths.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from dcm.compress.prune import Pruner
from dcm.compress.quantize import WeightSharing, share_weights
from dcm.compress.schedule import Gradual
from dcm.encoder.kmeans import Init

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError:
        raise ImportError("the Lightning callback needs lightning: pip install 'dcm[lightning]'") from None


class DeepCompression(Callback):
    """Prune, then share weights, during ``Trainer.fit``; optionally export the result to a .dcm.

    ``sparsity`` / ``quality`` / ``bits`` take the same forms as ``Pruner`` and ``share_weights``
    (global, per kind {"conv": .., "fc": ..} or per layer name). ``example_input`` is needed with
    ``export_to`` (the ONNX trace of the model). ``centroid_lr``: learning rate of the centroids
    (default: 1/25 of the optimizer's; a centroid's gradient sums a whole cluster's, so the
    weights' own rate diverges).
    """

    def __init__(self, sparsity: float | dict | None = None, *, quality: float | dict | None = None,
                 prune_epochs: int, prune_steps: int | None = None, dense_epochs: int = 0,
                 bits: int | dict | None = None, init: Init = "linear", centroid_lr: float | None = None,
                 export_to: str | os.PathLike | None = None, example_input: torch.Tensor | None = None):
        if export_to is not None and example_input is None:
            raise ValueError("export_to needs example_input (a batch the model accepts)")
        self.sparsity, self.quality = sparsity, quality
        self.dense_epochs, self.prune_epochs = dense_epochs, prune_epochs
        self.prune_steps = prune_steps or prune_epochs
        self.bits, self.init, self.centroid_lr = bits, init, centroid_lr
        self.export_to, self.example_input = export_to, example_input
        self.pruner: Pruner | None = None
        self.sharing: WeightSharing | None = None
        self.model = None  # the dcm Model written at the end, when export_to is set

    def on_train_epoch_start(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        epoch = trainer.current_epoch - self.dense_epochs
        if epoch == 0:
            self.pruner = Pruner(pl_module, self.sparsity, quality=self.quality,
                                 schedule=Gradual(steps=self.prune_steps))
        if self.pruner is not None and self.sharing is None and 0 <= epoch < self.prune_steps:
            self.pruner.step()
        if epoch == self.prune_epochs and self.sharing is None:
            self._start_sharing(trainer, pl_module)

    def _start_sharing(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        if self.pruner is not None:
            self.pruner.finalize()
        self.sharing = share_weights(pl_module, self.bits, init=self.init)
        codebooks = self.sharing.parameters()
        for opt in trainer.optimizers:  # the centroids are new parameters: fine-tune them too
            lr = self.centroid_lr if self.centroid_lr is not None else opt.param_groups[0]["lr"] / 25
            opt.add_param_group({"params": codebooks, "lr": lr, "weight_decay": 0.0})

    def on_fit_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        if self.sharing is not None:
            self.sharing.finalize()
        elif self.pruner is not None:
            self.pruner.finalize()
        if self.export_to is not None:
            from dcm.converters import from_torch

            code_bits = self.sharing.code_bits() if self.sharing is not None else None
            was_training = pl_module.training
            pl_module.eval()
            self.model = from_torch(pl_module.cpu(), self.example_input, self.export_to, code_bits=code_bits)
            pl_module.train(was_training)
