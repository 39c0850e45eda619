"""hemoseg-edge: retinal hemorrhage segmentation in colour fundus photographs, for the edge.

Public API: ``Segmenter.from_engine(path)`` -> ``Segmenter.segment(image)`` ->
``SegmentationResult``. The runtime never imports TensorFlow.
"""

import os as _os

# OpenBLAS (numpy's BLAS: the FOV circle fit here, matmuls in callers) lets its worker threads
# spin for ~2^28 cycles after each call; on a small CPU they then steal the cores from the
# inference that follows (the history is in BENCHMARKS.md's notes and the commit log).
# 2^4 cycles: they sleep at once. Same thread count, so bit-identical results. Read when numpy
# loads: set before it.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .errors import HemosegError, InputImageError, ModelError  # noqa: E402
from .result import Lesion, SegmentationResult  # noqa: E402
from .segmenter import Segmenter  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "HemosegError",
    "InputImageError",
    "Lesion",
    "ModelError",
    "SegmentationResult",
    "Segmenter",
    "__version__",
]
