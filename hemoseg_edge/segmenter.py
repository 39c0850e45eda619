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

from . import quality
from .backends import Backend, BackendName, auto_choice, available, load_backend
from .cpu import INT8_FLAGS, cpu_flags
from .errors import HemosegError, ModelError
from .inputs import LoadedImage, load_image
from .model_file import (
    DEFAULT_MODEL,
    INT8_MODEL,
    ModelMetadata,
    default_model_path,
    model_metadata,
    read_model,
)
from .postprocess import fov_area, image_score, threshold_windows, window_lesions
from .preprocess import Preprocessed, preprocess_frame
from .result import SegmentationResult

ImageLike = str | os.PathLike | np.ndarray | LoadedImage


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
        backend: BackendName = "auto",
        allow_defaults: bool = False,
        throughput: bool = False,
        **backend_options,
    ) -> Segmenter:
        """Load an ONNX model or a TensorRT engine file.

        ``path=None``: the shipped default model, in the variant that is fastest for the
        backend (``default_model``). ``throughput=True``: tune the backend for many images
        (``segment_batch``) rather than for the latency of one.
        """
        if path is None:
            return cls.default_model(backend, allow_defaults, throughput, **backend_options)
        path = Path(path)
        data, kind = read_model(path)
        source = str(path)
        metadata = model_metadata(data, kind, source, allow_defaults)
        if kind == "engine":
            backend = "tensorrt"
        elif backend == "tensorrt":  # an ONNX model: build its engine (cached) on this GPU
            from .build.trt_engine import DEFAULT_WORKSPACE_MB, cached_engine

            workspace = backend_options.pop("workspace_mb", DEFAULT_WORKSPACE_MB)
            data = cached_engine(data, source, workspace, backend_options.get("device", 0))
        loaded = load_backend(backend, data, source, throughput=throughput, **backend_options)
        return cls(loaded, metadata, source)

    @classmethod
    def default_model(
        cls,
        backend: BackendName = "auto",
        allow_defaults: bool = False,
        throughput: bool = False,
        *,
        fp32_name: str = DEFAULT_MODEL,
        int8_name: str = INT8_MODEL,
        **kw,
    ) -> Segmenter:
        """The shipped model: its INT8 Q/DQ variant where OpenVINO runs on a CPU with int8 dot
        products (AMX-INT8, AVX512-VNNI, AVX-VNNI), else the FP32 model (ONNX Runtime's CPU
        provider runs Q/DQ INT8 slower than FP32). Parity with FP32 is asserted in the tests
        and benchmarks. ``fp32_name`` / ``int8_name``: another shipped model's pair of files
        (e.g. the previous model, v1), chosen by the same rule."""
        wants_ov = backend == "openvino" or (
            backend == "auto" and auto_choice(available()) == "openvino"
        )
        if wants_ov and INT8_FLAGS & (cpu_flags() or frozenset()):
            try:
                path = default_model_path(int8_name)
            except ModelError:
                pass
            else:
                seg = cls.from_engine(path, backend, allow_defaults, throughput, **kw)
                if seg.backend.name == "openvino":
                    return seg
                seg.backend.close()  # "auto" fell back to ONNX Runtime: FP32 is faster there
        return cls.from_engine(
            default_model_path(fp32_name), backend, allow_defaults, throughput, **kw
        )

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
        self,
        prob: np.ndarray,
        pre: Preprocessed,
        image: LoadedImage,
        timings: dict[str, float],
    ) -> SegmentationResult:
        t = time.perf_counter()
        thr = self.metadata.threshold
        mask = threshold_windows(prob, pre.geometry, thr)
        lesions = window_lesions(mask, pre.geometry)
        area = fov_area(pre.geometry)
        score = image_score(prob, pre.geometry)
        colour = "greyscale_input" not in image.notes
        flags = quality.assess(image.frame, pre.fov, pre.green_stats, colour) + list(image.notes)
        timings["postprocess"] = 1000 * (time.perf_counter() - t)
        return SegmentationResult(
            source=image.path,
            probability=prob,
            mask_windows=mask,
            geometry=pre.geometry,
            threshold=thr,
            lesions=lesions,
            fov_area_px=area,
            flags=flags,
            timings_ms=timings,
            model={
                "source": os.path.basename(self.source),
                "version": self.metadata.version,
                "precision": self.metadata.precision,
                "backend": self.backend.name,
                "providers": ",".join(self.backend.providers),
            },
            image_score=score,
            image_threshold=(
                self.metadata.image_threshold if self.metadata.has_image_threshold else None
            ),
        )

    # --- public API ---------------------------------------------------------------------------
    def segment(self, image: ImageLike) -> SegmentationResult:
        image, pre, timings = self._load_and_preprocess(image)
        return self._finish(*self._infer(image, pre, timings))

    def segment_batch(
        self, images: Iterable[ImageLike], prefetch: int = 2
    ) -> Iterator[tuple[ImageLike, SegmentationResult | HemosegError]]:
        """Yield ``(input, result or error)`` in input order.

        A three-stage pipeline: decoding and preprocessing (``prefetch`` worker threads),
        inference (``backend.concurrency`` threads, back to back) and postprocessing (one
        thread) overlap; at most ``prefetch + concurrency + 1`` images are in flight, so memory
        stays bounded while the consumer is busy with earlier results. A bad image yields its
        ``HemosegError`` and does not stop the others.
        """
        items = iter(images)
        workers = max(1, prefetch)
        loader = ThreadPoolExecutor(workers, thread_name_prefix="hemoseg-load")
        streams = max(1, self.backend.concurrency)
        infer = ThreadPoolExecutor(streams, thread_name_prefix="hemoseg-infer")
        post = ThreadPoolExecutor(1, thread_name_prefix="hemoseg-post")
        pending: deque[tuple[ImageLike, Future]] = deque()

        def infer_stage(loaded: Future):
            return self._infer(*loaded.result())

        def post_stage(inferred: Future) -> SegmentationResult:
            image, pre, timings, prob = inferred.result()
            return self._finish(image, pre, timings, prob)

        def submit() -> bool:
            try:
                item = next(items)
            except StopIteration:
                return False
            loaded = loader.submit(self._load_and_preprocess, item)
            inferred = infer.submit(infer_stage, loaded)
            pending.append((item, post.submit(post_stage, inferred)))
            return True

        try:
            while len(pending) < workers + streams + 1 and submit():
                pass
            while pending:
                item, fut = pending.popleft()
                try:
                    result: SegmentationResult | HemosegError = fut.result()
                except HemosegError as e:
                    result = e
                submit()
                yield item, result
        finally:
            for pool in (loader, infer, post):
                pool.shutdown(wait=False, cancel_futures=True)
            for pool in (loader, infer, post):
                pool.shutdown(wait=True)

    def _load_and_preprocess(self, image: ImageLike):
        t0 = time.perf_counter()
        loaded = self.load(image)
        t1 = time.perf_counter()
        pre = self.preprocess(loaded)
        t2 = time.perf_counter()
        return loaded, pre, {"decode": 1000 * (t1 - t0), "preprocess": 1000 * (t2 - t1)}

    def _infer(self, image: LoadedImage, pre: Preprocessed, timings: dict[str, float]):
        t = time.perf_counter()
        prob = self.backend.run(pre.tensor)[0, 0]
        timings["inference"] = 1000 * (time.perf_counter() - t)
        return image, pre, timings, prob

    def _finish(
        self,
        image: LoadedImage,
        pre: Preprocessed,
        timings: dict[str, float],
        prob: np.ndarray,
    ) -> SegmentationResult:
        result = self.postprocess(prob, pre, image, timings)
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return result

    def info(self) -> dict:
        return {
            "source": self.source,
            "backend": self.backend.name,
            "providers": self.backend.providers,
            "concurrency": self.backend.concurrency,
            "input": {"name": self.backend.input_spec.name, "shape": self.backend.input_spec.shape},
            "metadata": self.metadata.to_props(),
            "preprocess_spec_matches": self.metadata.preprocess_matches,
        }
