"""A decoded weight on the torch device: CSR (cuSPARSE) or dense, with ``left(X) = W @ X``."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from dcm.encoder.codec import CsrParts


class TorchWeight:
    by_rows = False  # (the CPU WeightMatmul's per-row-count dense copy; describe() reads it)
    tune = False  # (nor does it time kernels: the CPU WeightMatmul's tune)

    def __init__(self, mode: str, weight: CsrParts | np.ndarray, device: str):
        self.mode = mode
        if mode == "sparse":
            self.shape = weight.shape2d
            with warnings.catch_warnings():  # "CSR support is in beta": nothing a user can act on
                warnings.simplefilter("ignore", UserWarning)
                self.w = torch.sparse_csr_tensor(
                    torch.as_tensor(weight.indptr.astype(np.int64)), torch.as_tensor(weight.indices.astype(np.int64)),
                    torch.as_tensor(weight.values, dtype=torch.float32), size=weight.shape2d, device=device,
                    check_invariants=False)  # the decoder already guarantees sorted, in-range indices
        else:
            self.shape = weight.shape
            self.w = torch.tensor(np.asarray(weight, dtype=np.float32), device=device)  # a copy: it may be read-only

    def left(self, x: torch.Tensor) -> torch.Tensor:
        """W [out, in] @ x [in, n] -> [out, n]."""
        y = self.w @ x
        if self.mode == "sparse" and not bool(torch.isfinite(x.sum())):
            y = self._poison(x, y)
        return y

    def _poison(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """NaN where a dense product has one (0 * Inf, 0 * NaN): see the CPU WeightMatmul."""
        bad = (~torch.isfinite(x)).to(torch.float32)
        pattern = torch.sparse_csr_tensor(self.w.crow_indices(), self.w.col_indices(),
                                          torch.ones_like(self.w.values()), size=self.shape, check_invariants=False)
        hits = pattern @ bad
        return torch.where(hits < bad.sum(dim=0, keepdim=True), torch.full_like(y, float("nan")), y)

    def right(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, in] @ W.T -> [n, out]."""
        if self.mode == "dense":
            return x @ self.w.T
        return self.left(x.T).T.contiguous()

    def rows(self, lo: int, hi: int, device: str) -> "TorchWeight":
        """Rows lo..hi as their own weight (one group of a grouped convolution)."""
        if self.mode == "dense":
            return TorchWeight("dense", self.w[lo:hi].cpu().numpy(), device)
        crow, col, val = self.w.crow_indices().cpu(), self.w.col_indices().cpu(), self.w.values().cpu()
        a, b = int(crow[lo]), int(crow[hi])
        part = CsrParts((hi - lo, self.shape[1]), val[a:b].numpy(), None, None, col[a:b].numpy(),
                        (crow[lo : hi + 1] - a).numpy())
        return TorchWeight("sparse", part, device)
