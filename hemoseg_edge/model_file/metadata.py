"""Model metadata that travels inside the model file (ONNX ``metadata_props``).

Every key is a string in ONNX; ``ModelMetadata.from_props`` parses and checks them. A model
without the required keys is refused (``MissingMetadataError``) unless the caller explicitly
asks for defaults (``allow_defaults=True``, the CLI's ``--assume-defaults``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import ModelError
from ..preprocess import DEFAULT_INPUT_HW, spec_sha256

PREFIX = "hemoseg."
NO_IMAGE_THRESHOLD = -1.0
# model v2 takes 1120 x 1152 (1.3 Mpx); 4096 x 4096 leaves room and bounds every buffer
MAX_INPUT_PIXELS = 4096 * 4096
TTA_VIEWS = ("hflip", "vflip")  # the flips a model's graph may average over (``tta``)
REQUIRED = ("input_height", "input_width", "layout", "normalisation", "threshold", "version")


class MissingMetadataError(ModelError):
    pass


@dataclass(frozen=True)
class ModelMetadata:
    input_height: int = DEFAULT_INPUT_HW[0]
    input_width: int = DEFAULT_INPUT_HW[1]
    layout: str = "NCHW"  # tensor (1, 1, H, W): green channel only
    normalisation: str = "x/255"
    threshold: float = 0.5
    version: str = "unversioned"
    precision: str = "fp32"
    training_data: str = "unknown"
    # image-level operating point on ``postprocess.image_score`` (chosen on validation);
    # NO_IMAGE_THRESHOLD: the model has none, results carry the score but no verdict
    image_threshold: float = NO_IMAGE_THRESHOLD
    # lesions smaller than this many model-input pixels (their area in photograph pixels over
    # one model pixel's) are dropped from mask, lesions and burden; chosen on validation.
    # 0: every lesion kept (a model file older than the key)
    min_lesion_model_px: float = 0.0
    architecture: str = "unet-skouta2022"
    # test-time augmentation inside the graph ("hflip": the mean of the image's and its mirror
    # image's probabilities, hemoseg_edge.build.tta); "none" for a plain network
    tta: str = "none"
    preprocess_sha256: str = field(default_factory=spec_sha256)
    extra: dict = field(default_factory=dict)

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.input_height, self.input_width)

    def to_props(self) -> dict[str, str]:
        d = asdict(self)
        extra = d.pop("extra")
        props = {PREFIX + k: str(v) for k, v in d.items()}
        props[PREFIX + "extra"] = json.dumps(extra, sort_keys=True)
        return props

    @classmethod
    def from_props(
        cls, props: dict[str, str], source: str = "model", allow_defaults: bool = False
    ) -> ModelMetadata:
        ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        missing = [k for k in REQUIRED if k not in ours]
        if missing and not allow_defaults:
            raise MissingMetadataError(
                f"{source}: no hemoseg metadata ({', '.join(missing)} missing); "
                "export it with training/export.py or pass --assume-defaults"
            )
        d = asdict(cls())
        try:
            for k, v in ours.items():
                if k not in d:
                    continue
                if k == "extra":
                    d[k] = json.loads(v)
                elif isinstance(d[k], int):
                    d[k] = int(v)
                elif isinstance(d[k], float):
                    d[k] = float(v)
                else:
                    d[k] = v
        except (ValueError, json.JSONDecodeError) as e:
            raise ModelError(f"{source}: malformed metadata ({e})") from None
        md = cls(**d)
        md.validate(source)
        return md

    def validate(self, source: str = "model") -> None:
        if self.layout != "NCHW":
            raise ModelError(f"{source}: unsupported layout {self.layout!r} (expected NCHW)")
        if self.normalisation != "x/255":
            raise ModelError(f"{source}: unsupported normalisation {self.normalisation!r}")
        if not (0.0 < self.threshold < 1.0):
            raise ModelError(f"{source}: threshold {self.threshold} outside (0, 1)")
        if self.image_threshold != NO_IMAGE_THRESHOLD and not (0.0 < self.image_threshold < 1.0):
            raise ModelError(f"{source}: image_threshold {self.image_threshold} outside (0, 1)")
        if not 0.0 <= self.min_lesion_model_px < 1e6:
            raise ModelError(f"{source}: min_lesion_model_px {self.min_lesion_model_px} invalid")
        if self.tta != "none" and not set(self.tta.split(",")) <= set(TTA_VIEWS):
            raise ModelError(f"{source}: unknown test-time augmentation {self.tta!r}")
        if self.input_height % 16 or self.input_width % 16 or min(self.input_hw) < 16:
            raise ModelError(f"{source}: input size {self.input_hw} is not a multiple of 16")
        if self.input_height * self.input_width > MAX_INPUT_PIXELS:
            raise ModelError(
                f"{source}: input size {self.input_hw} exceeds {MAX_INPUT_PIXELS} pixels "
                "(metadata from an untrusted model: refused before allocating buffers)"
            )

    @property
    def has_image_threshold(self) -> bool:
        return self.image_threshold != NO_IMAGE_THRESHOLD

    @property
    def image_operating_point(self) -> float | None:
        """``image_threshold``, or None for a model without one (no verdict)."""
        return self.image_threshold if self.has_image_threshold else None

    @property
    def preprocess_matches(self) -> bool:
        return self.preprocess_sha256 == spec_sha256()
