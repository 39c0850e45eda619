"""The one small protocol every inference backend implements.

A backend owns its runtime session and nothing else: it knows no files beyond the model it was
given, no CLI, no results. ``run`` takes a float32 batch (N, 1, H, W) in [0, 1] and returns
float32 probabilities of the same shape.

A backend that preprocesses on its own device sets ``takes_frames = True`` and implements
``run_frame``: it gets the decoded uint8 frame and the field-of-view crop box instead of a
tensor, and must compute the same input as ``preprocess.preprocess_tensor`` (crop, green, exact
area resampling, /255; up to float rounding) before running the model. ``Segmenter`` then runs
only ``preprocess.preprocess_geometry`` on the CPU (FOV, geometry, green statistics) and never
builds the tensor. ``run`` stays available on such backends (tests and benchmarks feed it
tensors).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..errors import InferenceMemoryError, is_allocation_failure

# (x0, y0, x1, y1) in frame pixels, x1/y1 exclusive (``preprocess.Fov.box``)
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, int, int, int]  # N, C, H, W (N may be -1 for dynamic)
    dtype: str = "float32"


class Backend(ABC):
    """Base class: ``load`` happens in ``__init__``; ``run`` is a pure function of its input."""

    name: str = "base"
    # how many ``run`` calls may usefully run at once (e.g. OpenVINO throughput streams)
    concurrency: int = 1
    # True: ``Segmenter`` hands ``run_frame`` the frame and FOV box instead of a tensor
    takes_frames: bool = False

    @property
    @abstractmethod
    def input_spec(self) -> InputSpec: ...

    @property
    def providers(self) -> list[str]:
        """What actually executes (e.g. ORT execution providers, OpenVINO device)."""
        return [self.name]

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def run_frame(self, frame: np.ndarray, box: Box) -> np.ndarray:
        """One decoded frame (uint8 HxW grey, HxWx3 BGR or HxWx4 BGRA) and its FOV crop box
        (frame pixels) -> (1, 1, H, W) float32 probabilities, H x W = ``input_spec``'s.
        Only backends with ``takes_frames = True`` implement it."""
        raise NotImplementedError(f"the {self.name} backend takes tensors (run), not frames")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (device buffers, sessions)."""


def raise_if_allocation_failure(e: Exception, backend: str) -> None:
    """Turn a runtime's out-of-memory error during inference into ``InferenceMemoryError``."""
    if is_allocation_failure(e):
        text = " ".join(str(e).split())[:160]
        raise InferenceMemoryError(
            f"{backend} could not allocate memory during inference ({text})"
        ) from None
