"""``Segmenter``: the session that owns a backend and runs image -> preprocess -> backend ->
postprocess -> ``SegmentationResult``."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import engine_file, quality
from .backends import Backend, load_backend
from .engines import default_model_path, verify_against_manifest
from .errors import HemosegError, ModelError
from .io import LoadedImage, load_image, read_bytes
from .metadata import ModelMetadata
from .postprocess import find_lesions, to_original_mask
from .preprocess import Preprocessed, preprocess_frame
from .result import SegmentationResult

ImageLike = str | os.PathLike | np.ndarray | LoadedImage


def read_model(path: str | os.PathLike) -> tuple[bytes, str]:
    """Model bytes and kind ("onnx" or "engine"); one-line errors for bad files."""
    p = Path(path)
    try:
        data = read_bytes(p)
    except HemosegError as e:
        raise ModelError(str(e)) from None
    verify_against_manifest(p, data)
    return data, "engine" if engine_file.is_engine(data) else "onnx"


def onnx_metadata(data: bytes, source: str, allow_defaults: bool = False) -> ModelMetadata:
    import onnx
    from google.protobuf.message import DecodeError

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelError(f"{source}: not a valid ONNX model ({type(e).__name__})") from None
    if not proto.graph.node:
        raise ModelError(f"{source}: not a valid ONNX model (empty graph)")
    props = {p.key: p.value for p in proto.metadata_props}
    return ModelMetadata.from_props(props, source, allow_defaults)


class Segmenter:
    """Hemorrhage segmentation with one loaded model.

    >>> seg = Segmenter.from_engine()            # the shipped default model
    >>> result = seg.segment("photo.jpg")
    >>> result.mask.shape == result.geometry.original_hw
    True
    """

    def __init__(self, backend: Backend, metadata: ModelMetadata, source: str = "model"):
        self.backend = backend
        self.metadata = metadata
        self.source = source
        spec = backend.input_spec
        if spec.shape[2:] != metadata.input_hw:
            raise ModelError(
                f"{source}: metadata input size {metadata.input_hw} != model input {spec.shape[2:]}"
            )

    @classmethod
    def from_engine(
        cls,
        path: str | os.PathLike | None = None,
        backend: str = "auto",
        allow_defaults: bool = False,
        **backend_options,
    ) -> Segmenter:
        """Load an ONNX model or a TensorRT engine file (``None``: the shipped default model)."""
        path = Path(path) if path is not None else default_model_path()
        data, kind = read_model(path)
        source = str(path)
        if kind == "engine":
            header, _ = engine_file.split(data, source)
            metadata = ModelMetadata.from_props(header["metadata"], source)
            backend = "tensorrt"
        else:
            metadata = onnx_metadata(data, source, allow_defaults)
        return cls(load_backend(backend, data, source, **backend_options), metadata, source)

    # --- the three stages -------------------------------------------------------------------
    def load(self, image: ImageLike) -> LoadedImage:
        if isinstance(image, LoadedImage):
            return image
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise HemosegError("array input must be uint8 HxW or HxWx3 (BGR)")
            frame = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
            return LoadedImage("<array>", frame, frame.shape[:2], "array")
        return load_image(image, self.metadata.input_hw)

    def preprocess(self, image: LoadedImage) -> Preprocessed:
        return preprocess_frame(image.frame, image.original_hw, self.metadata.input_hw)

    def postprocess(
        self, prob: np.ndarray, pre: Preprocessed, image: LoadedImage, timings: dict[str, float]
    ) -> SegmentationResult:
        t = time.perf_counter()
        thr = self.metadata.threshold
        mask = to_original_mask(prob, pre.geometry, thr)
        lesions = find_lesions(mask, pre.geometry)
        fov_area = int(pre.geometry.fov_mask().sum())
        colour = "greyscale_input" not in image.notes
        flags = quality.assess(image.frame, pre.fov, pre.green_stats, colour) + list(image.notes)
        timings["postprocess"] = 1000 * (time.perf_counter() - t)
        return SegmentationResult(
            source=image.path,
            probability=prob,
            mask=mask,
            geometry=pre.geometry,
            threshold=thr,
            lesions=lesions,
            fov_area_px=fov_area,
            flags=flags,
            timings_ms=timings,
            model={
                "source": os.path.basename(self.source),
                "version": self.metadata.version,
                "precision": self.metadata.precision,
                "backend": self.backend.name,
                "providers": ",".join(self.backend.providers),
            },
        )

    # --- public API ---------------------------------------------------------------------------
    def segment(self, image: ImageLike) -> SegmentationResult:
        image, pre, timings = self._load_and_preprocess(image)
        return self._infer_and_finish(image, pre, timings)

    def segment_batch(
        self, images: Iterable[ImageLike], prefetch: int = 2
    ) -> Iterator[tuple[ImageLike, SegmentationResult | HemosegError]]:
        """Yield ``(input, result or error)`` in input order; decoding and preprocessing of the
        next ``prefetch`` images overlap inference of the current one (bounded memory). A bad
        image yields its ``HemosegError`` and does not stop the others."""
        items = iter(images)
        with ThreadPoolExecutor(max_workers=max(1, prefetch)) as pool:
            pending: deque[tuple[ImageLike, Future]] = deque()

            def submit() -> bool:
                try:
                    item = next(items)
                except StopIteration:
                    return False
                pending.append((item, pool.submit(self._load_and_preprocess, item)))
                return True

            for _ in range(max(1, prefetch)):
                if not submit():
                    break
            while pending:
                item, fut = pending.popleft()
                submit()
                try:
                    image, pre, timings = fut.result()
                    yield item, self._infer_and_finish(image, pre, timings)
                except HemosegError as e:
                    yield item, e

    def _load_and_preprocess(self, image: ImageLike):
        t0 = time.perf_counter()
        loaded = self.load(image)
        t1 = time.perf_counter()
        pre = self.preprocess(loaded)
        t2 = time.perf_counter()
        return loaded, pre, {"decode": 1000 * (t1 - t0), "preprocess": 1000 * (t2 - t1)}

    def _infer_and_finish(
        self, image: LoadedImage, pre: Preprocessed, timings: dict[str, float]
    ) -> SegmentationResult:
        t = time.perf_counter()
        prob = self.backend.run(pre.tensor)[0, 0]
        timings["inference"] = 1000 * (time.perf_counter() - t)
        result = self.postprocess(prob, pre, image, timings)
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return result

    def info(self) -> dict:
        return {
            "source": self.source,
            "backend": self.backend.name,
            "providers": self.backend.providers,
            "input": {"name": self.backend.input_spec.name, "shape": self.backend.input_spec.shape},
            "metadata": self.metadata.to_props(),
            "preprocess_spec_matches": self.metadata.preprocess_matches,
        }
