"""One frame's histogram as torch tensors, made once per frame and shared by every stage that
reads it: the change-mask net, the ANC complexity estimator (both read ``log1p`` of the counts;
the native mask net from a table, asking for the map only for a count the table lacks, so the
map is made at the first stage that needs it) and the motion state's per-patch counts. At
batch 1 on CPU each saved call is a visible part of a sparse frame; the values are the ones
each stage computed on its own (the same operations on the same input)."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["FrameTensors", "hist_tensor"]


def hist_tensor(hist: np.ndarray) -> torch.Tensor:
    """``hist`` as a float32 tensor sharing its memory when it can; FrameBinner hands frames
    out with READ-ONLY histograms (their buffers are reused), and those are copied, since a
    torch tensor is always writable."""
    a = np.ascontiguousarray(hist, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class FrameTensors:
    """``source`` (C, H, W) event counts as ``hist`` (1, C, H, W) float32 and, made at the first
    read, ``log`` = ``log1p(hist)``."""

    __slots__ = ("source", "hist", "_log")

    def __init__(self, source: np.ndarray):
        self.source = source
        self.hist = hist_tensor(source)[None]
        self._log: torch.Tensor | None = None

    @property
    def log(self) -> torch.Tensor:
        if self._log is None:
            self._log = torch.log1p(self.hist)
        return self._log

    @staticmethod
    def of(hist: np.ndarray, last: FrameTensors | None) -> FrameTensors:
        """``last`` when it was made of this very array (a stage of the frame in progress),
        else new tensors of ``hist``."""
        return last if last is not None and last.source is hist else FrameTensors(hist)
