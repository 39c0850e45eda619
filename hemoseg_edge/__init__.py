"""hemoseg-edge: retinal hemorrhage segmentation in colour fundus photographs, for the edge.

Public API: ``Segmenter.from_engine(path)`` -> ``Segmenter.segment(image)`` ->
``SegmentationResult``. The runtime never imports TensorFlow.
"""

from .errors import HemosegError, InputImageError, ModelError
from .result import Lesion, SegmentationResult
from .segmenter import Segmenter

__version__ = "0.1.0"
__all__ = [
    "HemosegError",
    "InputImageError",
    "Lesion",
    "ModelError",
    "SegmentationResult",
    "Segmenter",
    "__version__",
]
