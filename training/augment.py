"""The paper's augmentation, on the fly and seeded: rotations by 90 degrees, horizontal and
vertical flips, Gaussian noise, gamma, and contrast/brightness jitter (the input is the green
channel only, so "colour" jitter is an intensity jitter of that channel). Optionally an exposure
factor on the whole field of view (``exposure``, off in the paper's recipe): a photograph taken
half as bright is the camera-side failure that degrades the shipped models most.

Geometric transforms are applied identically to image and mask; photometric ones to the image
only. Inputs and outputs are (H, W) float32 arrays in [0, 1].
"""

from __future__ import annotations

import numpy as np


def geometric(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, allow_transpose: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Random rot90 (odd turns only when the shape may change) and flips, same on both."""
    k = int(rng.integers(4)) if allow_transpose else 2 * int(rng.integers(2))
    x, y = np.rot90(x, k), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    if rng.random() < 0.5:
        x, y = x[::-1, :], y[::-1, :]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


Exposure = tuple[float, float]
NO_EXPOSURE: Exposure = (1.0, 1.0)


def photometric(
    x: np.ndarray, rng: np.random.Generator, exposure: Exposure = NO_EXPOSURE
) -> np.ndarray:
    """Gamma, contrast/brightness and Gaussian noise, after an exposure factor drawn
    log-uniformly from ``exposure``; result clipped to [0, 1]."""
    fov = x > 0.02  # keep the black border black
    if exposure != NO_EXPOSURE:
        lo, hi = exposure
        x = np.where(fov, x * float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), x)
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    out = np.power(np.clip(x, 0.0, 1.0), gamma)
    contrast = rng.uniform(0.8, 1.2)
    brightness = rng.uniform(-0.06, 0.06)
    mean = float(out[fov].mean()) if fov.any() else 0.0
    out = (out - mean) * contrast + mean + brightness
    sigma = rng.uniform(0.0, 0.02)
    out = out + rng.normal(0.0, sigma, size=out.shape).astype(np.float32)
    out = np.where(fov, out, x)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def augment(
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    allow_transpose: bool = True,
    exposure: Exposure = NO_EXPOSURE,
) -> tuple[np.ndarray, np.ndarray]:
    x, y = geometric(x, y, rng, allow_transpose)
    return photometric(x, rng, exposure), y
