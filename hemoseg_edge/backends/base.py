"""The one small protocol every inference backend implements.

A backend owns its runtime session and nothing else: it knows no files beyond the model it was
given, no CLI, no results. ``run`` takes a float32 batch (N, 1, H, W) in [0, 1] and returns
float32 probabilities of the same shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


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

    @property
    @abstractmethod
    def input_spec(self) -> InputSpec: ...

    @property
    def providers(self) -> list[str]:
        """What actually executes (e.g. ORT execution providers, OpenVINO device)."""
        return [self.name]

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (device buffers, sessions)."""
