"""``Segmenter``: the session that owns a backend and runs image -> preprocess -> backend ->
postprocess -> ``SegmentationResult``.

Two data paths, chosen by the backend (``Backend.takes_frames``):

* tensor path (ONNX Runtime, OpenVINO): the CPU computes the FOV, geometry and the model input
  tensor (``preprocess.preprocess_frame``); ``backend.run(tensor)``.
* device path (TensorRT with the CUDA preprocessing kernel): the CPU computes only what
  postprocessing and the quality checks need (``preprocess.preprocess_geometry``: FOV, geometry,
  green mean/std); ``backend.run_frame(frame, fov_box)`` builds the input on the device. The
  ``preprocess`` timing then covers the CPU part only; the device's upload and kernel are in
  ``inference``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

import numpy as np

from . import anatomy, quality
from .backends import Backend, BackendName, auto_choice, available, load_backend
from .cpu import INT8_FLAGS, cpu_flags
from .errors import EXIT_STUCK, HemosegError, InferenceMemoryError, ModelError
from .inputs import LoadedImage, load_image
from .model_file import (
    DEFAULT_MODEL,
    OPENVINO_INT8_MODEL,
    OPENVINO_PRECISION,
    ModelMetadata,
    default_model_path,
    model_metadata,
    read_model,
)
from .postprocess import (
    drop_small_lesions,
    fov_area,
    image_score,
    min_lesion_px,
    threshold_windows,
    window_lesions,
)
from .preprocess import Preprocessed, preprocess_frame, preprocess_geometry
from .result import SegmentationResult

ImageLike = str | os.PathLike | np.ndarray | LoadedImage
Item = TypeVar("Item", bound=ImageLike)
# No inference on a CPU or a Jetson takes minutes: past this the stream is taken as stalled
INFER_TIMEOUT_S = float(os.environ.get("HEMOSEG_INFER_TIMEOUT", "300"))
# probabilities may overshoot [0, 1] by float rounding (a sigmoid in fp16), not by more
_PROB_SLACK = 1e-3


class StalledInferenceError(HemosegError):
    """An inference did not return within ``INFER_TIMEOUT_S``: the batch stops (the stuck
    runtime thread cannot be interrupted); images not processed are reported as failed."""

    exit_code = EXIT_STUCK


def _name(item: object) -> str:
    if isinstance(item, LoadedImage):
        return item.path
    return "<array>" if isinstance(item, np.ndarray) else str(item)


class Segmenter:
    """Hemorrhage segmentation with one loaded model.

    >>> seg = Segmenter.from_engine()            # the shipped default model
    >>> result = seg.segment("photo.jpg")
    >>> result.mask.shape == result.geometry.original_hw
    True
    """

    def __init__(
        self,
        backend: Backend,
        metadata: ModelMetadata,
        source: str = "model",
        threshold: float | None = None,
        model_sha256: str | None = None,
        *,
        min_lesion_model_px: float | None = None,
    ):
        """``threshold``: the pixel operating point, overriding the model's (its metadata
        value, chosen on validation, is the default). ``min_lesion_model_px``: the smallest
        lesion kept, in model-input pixels, overriding the model's (0 keeps every lesion)."""
        self.backend = backend
        self.metadata = metadata
        self.source = source
        self.model_sha256 = model_sha256
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise HemosegError(f"threshold {threshold} outside (0, 1)")
        self.threshold = metadata.threshold if threshold is None else float(threshold)
        if min_lesion_model_px is not None and not 0.0 <= min_lesion_model_px < 1e6:
            raise HemosegError(f"minimum lesion area {min_lesion_model_px} is not >= 0")
        self.min_lesion_model_px = (
            metadata.min_lesion_model_px
            if min_lesion_model_px is None
            else float(min_lesion_model_px)
        )
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
        threshold: float | None = None,
        *,
        min_lesion_model_px: float | None = None,
        **backend_options,
    ) -> Segmenter:
        """Load an ONNX model or a TensorRT engine file.

        ``path=None``: the shipped default model, in the variant that is fastest for the
        backend (``default_model``). ``throughput=True``: tune the backend for many images
        (``segment_batch``) rather than for the latency of one. ``threshold``: override the
        model's pixel threshold; ``min_lesion_model_px``: its minimum lesion area.
        """
        if path is None:
            return cls.default_model(
                backend,
                allow_defaults,
                throughput,
                threshold=threshold,
                min_lesion_model_px=min_lesion_model_px,
                **backend_options,
            )
        path = Path(path)
        wants_ov = backend == "openvino" or (
            backend == "auto" and auto_choice(available()) == "openvino"
        )
        if wants_ov and path.name == DEFAULT_MODEL:  # by name: the archive spools it by path
            backend_options.setdefault("precision", OPENVINO_PRECISION)  # the parity precision
        data, kind = read_model(path)
        sha256 = hashlib.sha256(data).hexdigest()
        source = str(path)
        metadata = model_metadata(data, kind, source, allow_defaults)
        if kind == "engine":
            backend = "tensorrt"
        elif backend == "tensorrt":  # an ONNX model: build its engine (cached) on this GPU
            from .build.trt_engine import DEFAULT_WORKSPACE_MB, cached_engine

            workspace = backend_options.pop("workspace_mb", DEFAULT_WORKSPACE_MB)
            data = cached_engine(data, source, workspace, backend_options.get("device", 0))
        loaded = load_backend(backend, data, source, throughput=throughput, **backend_options)
        return cls(
            loaded, metadata, source, threshold, sha256, min_lesion_model_px=min_lesion_model_px
        )

    @classmethod
    def default_model(
        cls,
        backend: BackendName = "auto",
        allow_defaults: bool = False,
        throughput: bool = False,
        *,
        fp32_name: str = DEFAULT_MODEL,
        int8_name: str | None = OPENVINO_INT8_MODEL,
        threshold: float | None = None,
        min_lesion_model_px: float | None = None,
        **kw,
    ) -> Segmenter:
        """The shipped model: its INT8 Q/DQ variant where OpenVINO runs on a CPU with int8 dot
        products (AMX-INT8, AVX512-VNNI, AVX-VNNI) and keeps parity with FP32 there (asserted
        in the tests; ``OPENVINO_INT8_MODEL``), else the FP32 model (ONNX Runtime's CPU
        provider runs Q/DQ INT8 slower than FP32). ``fp32_name`` / ``int8_name``: another
        shipped model's pair of files (e.g. the previous model, v1), chosen by the same rule;
        ``int8_name=None``: always the FP32 file."""
        kw["min_lesion_model_px"] = min_lesion_model_px
        wants_ov = backend == "openvino" or (
            backend == "auto" and auto_choice(available()) == "openvino"
        )
        if int8_name and wants_ov and INT8_FLAGS & (cpu_flags() or frozenset()):
            try:
                path = default_model_path(int8_name)
            except ModelError:
                pass
            else:
                seg = cls.from_engine(path, backend, allow_defaults, throughput, threshold, **kw)
                if seg.backend.name == "openvino":
                    return seg
                seg.backend.close()  # "auto" fell back to ONNX Runtime: FP32 is faster there
        return cls.from_engine(
            default_model_path(fp32_name), backend, allow_defaults, throughput, threshold, **kw
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

    def preprocess(self, image: LoadedImage, tensor: bool = True) -> Preprocessed:
        """FOV, geometry and green statistics, plus (``tensor=True``) the model input tensor
        for ``backend.run``. ``segment`` / ``segment_batch`` pass ``tensor=False`` when the
        backend takes frames (the device path): ``.tensor`` is then None."""
        fn = preprocess_frame if tensor else preprocess_geometry
        return fn(image.frame, image.original_hw, self.metadata.input_hw)

    def postprocess(
        self,
        prob: np.ndarray,
        pre: Preprocessed,
        image: LoadedImage,
        timings: dict[str, float],
    ) -> SegmentationResult:
        t = time.perf_counter()
        thr = self.threshold
        mask = drop_small_lesions(
            threshold_windows(prob, pre.geometry, thr),
            min_lesion_px(pre.geometry, self.min_lesion_model_px),
        )
        lesions = window_lesions(mask, pre.geometry, prob)
        area = fov_area(pre.geometry)
        score = image_score(prob, pre.geometry)
        colour = "greyscale_input" not in image.notes
        g = pre.geometry
        extent = min(2 * g.fov_radius, g.box[2] - g.box[0], g.box[3] - g.box[1])  # original px
        flags = quality.assess(image.frame, pre.fov, pre.green_stats, colour, extent)
        flags += list(image.notes)
        t2 = time.perf_counter()
        timings["postprocess"] = 1000 * (t2 - t)
        # optic disc, fovea, laterality; each lesion's distance to the fovea (``anatomy``)
        anat = anatomy.locate(image.frame, pre.fov, pre.geometry, image.metadata)
        lesions = anatomy.annotate_lesions(lesions, anat)
        timings["anatomy"] = 1000 * (time.perf_counter() - t2)
        return SegmentationResult(
            source=image.path,
            probability=prob,
            mask_windows=mask,
            geometry=pre.geometry,
            threshold=thr,
            min_lesion_model_px=self.min_lesion_model_px,
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
                "sha256": self.model_sha256 or "",
            },
            input_sha256=image.sha256,
            image_score=score,
            anatomy=anat,
            image_threshold=self.metadata.image_operating_point,
        )

    # --- public API ---------------------------------------------------------------------------
    def segment(self, image: ImageLike) -> SegmentationResult:
        image, pre, timings = self._load_and_preprocess(image)
        return self._finish(*self._infer(image, pre, timings))

    def segment_batch(
        self, images: Iterable[Item], prefetch: int = 2, timeout: float | None = None
    ) -> Iterator[tuple[Item, SegmentationResult | HemosegError]]:
        """Yield ``(input, result or error)`` in input order.

        A three-stage pipeline: decoding and preprocessing (``prefetch`` worker threads),
        inference (``backend.concurrency`` threads, back to back) and postprocessing (one
        thread) overlap; at most ``prefetch + concurrency + 1`` images are in flight, so memory
        stays bounded while the consumer is busy with earlier results. A bad image yields its
        error (any exception becomes a one-line ``HemosegError``) and does not stop the others.

        Watchdog: an image not finished within ``timeout`` s (default ``INFER_TIMEOUT_S``) of
        reaching the head of the queue means a stalled runtime; it and every image after it
        are yielded as ``StalledInferenceError``, and the generator stops (the caller should
        exit: the stuck thread cannot be joined).
        """
        limit = INFER_TIMEOUT_S if timeout is None else timeout
        items = iter(images)
        workers = max(1, prefetch)
        loader = ThreadPoolExecutor(workers, thread_name_prefix="hemoseg-load")
        streams = max(1, self.backend.concurrency)
        infer = ThreadPoolExecutor(streams, thread_name_prefix="hemoseg-infer")
        post = ThreadPoolExecutor(1, thread_name_prefix="hemoseg-post")
        pending: deque[tuple[Item, Future]] = deque()
        stalled = False

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
                    result: SegmentationResult | HemosegError = fut.result(timeout=limit)
                except FutureTimeout:
                    stalled = True
                    msg = f"{_name(item)}: not processed within {limit:g} s (inference stalled)"
                    yield item, StalledInferenceError(msg)
                    for rest, _ in pending:
                        why = "not processed: the batch stopped after a stalled inference"
                        yield rest, StalledInferenceError(f"{_name(rest)}: {why}")
                    for rest in items:
                        why = "not processed: the batch stopped after a stalled inference"
                        yield rest, StalledInferenceError(f"{_name(rest)}: {why}")
                    return
                except InferenceMemoryError as e:  # the image may be fine; the runtime is not
                    result = InferenceMemoryError(f"{_name(item)}: {e}")
                except HemosegError as e:
                    result = e
                except MemoryError:
                    result = HemosegError(f"{_name(item)}: out of memory")
                except Exception as e:  # noqa: BLE001 - a bug must not stop the batch
                    text = " ".join(str(e).split())[:200]
                    result = HemosegError(
                        f"{_name(item)}: internal error: {type(e).__name__}: {text}"
                    )
                submit()
                yield item, result
        finally:
            for pool in (loader, infer, post):
                pool.shutdown(wait=False, cancel_futures=True)
            if not stalled:  # a stuck runtime thread would block the join forever
                for pool in (loader, infer, post):
                    pool.shutdown(wait=True)

    def _load_and_preprocess(
        self, image: ImageLike
    ) -> tuple[LoadedImage, Preprocessed, dict[str, float]]:
        t0 = time.perf_counter()
        loaded = self.load(image)
        t1 = time.perf_counter()
        pre = self.preprocess(loaded, tensor=not self.backend.takes_frames)
        t2 = time.perf_counter()
        return loaded, pre, {"decode": 1000 * (t1 - t0), "preprocess": 1000 * (t2 - t1)}

    def _infer(self, image: LoadedImage, pre: Preprocessed, timings: dict[str, float]):
        t = time.perf_counter()
        if self.backend.takes_frames:  # the device path: the backend preprocesses the frame
            x0, y0, x1, y1 = pre.fov.box
            box = (float(x0), float(y0), float(x1), float(y1))
            out = self.backend.run_frame(image.frame, box)
        elif pre.tensor is None:
            raise HemosegError(
                f"the {self.backend.name} backend takes tensors; preprocess with tensor=True"
            )
        else:
            out = self.backend.run(pre.tensor)
        prob = self._checked(out, image)[0, 0]
        timings["inference"] = 1000 * (time.perf_counter() - t)
        return image, pre, timings, prob

    def _checked(self, out: np.ndarray, image: LoadedImage) -> np.ndarray:
        """A model's output is not trusted: shape (1, 1, H, W), finite, in [0, 1]."""
        want = (1, 1, *self.metadata.input_hw)
        if getattr(out, "shape", None) != want:
            shape = getattr(out, "shape", type(out).__name__)
            raise ModelError(f"{self.source}: model output shape {shape} != {want}")
        lo, hi = float(np.min(out)), float(np.max(out))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ModelError(f"{self.source}: model output not finite (NaN/inf) on {image.path}")
        if lo < -_PROB_SLACK or hi > 1 + _PROB_SLACK:
            raise ModelError(
                f"{self.source}: model output [{lo:.3g}, {hi:.3g}] is not a probability"
            )
        return out

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
