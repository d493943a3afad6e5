"""The detections message (schema v1 and v2) as strict pydantic models: ingest's hot path.

Why not the JSON Schema validator per message: ``jsonschema`` costs milliseconds per
detection and even compiled ``fastjsonschema`` costs more than parsing; pydantic parses and
checks in one pass in Rust, several times faster than ``json.loads`` alone. The JSON Schema
(``office/schemas/detections.schema.json``) stays the contract: a test checks that these models
accept and refuse the same messages as the schema, field by field.

Mapping from the schema: ``integer`` = strict int (no bool, no 1.0), ``number`` = finite float
(ints accepted), ``["x", "null"]`` = ``X | None`` without default (the key must be there),
optional keys get a default that is not None (so an explicit null is refused like the schema
does). Unknown keys are ignored (the schema allows additional properties). Known, documented
differences: a schema ``integer`` written as ``2.0`` is refused here, and ``ts``/``sent_ts`` must
carry a timezone (the agent always writes ``Z``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, frozen=True)

NonNegInt = Annotated[int, Field(ge=0, le=2**63 - 1)]
NonNegFloat = Annotated[float, Field(ge=0)]
MSG_ID_PATTERN = r"^[0-9a-f]{32}$"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SUPPORTED_VERSIONS = (1, 2)


class Envelope(BaseModel):
    """The fields every JSON message carries (docs/mqtt.md, Envelope)."""

    model_config = _STRICT

    schema_version: int
    msg_id: Annotated[str, Field(pattern=MSG_ID_PATTERN)]
    seq: NonNegInt
    device_id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    ts: AwareDatetime
    sent_ts: AwareDatetime


class Frame(BaseModel):
    model_config = _STRICT

    index: Annotated[int, Field(ge=0, le=2**63 - 1)]
    width: Annotated[int, Field(ge=1, le=2**31 - 1)]
    height: Annotated[int, Field(ge=1, le=2**31 - 1)]
    source: str
    position_s: float | None = None


class ModelInfo(BaseModel):
    model_config = _STRICT

    name: str
    version: str
    backend: Literal["onnx", "tflite"]
    precision: str
    threshold: Annotated[float, Field(gt=0, lt=1)]


class Position(BaseModel):
    model_config = _STRICT

    lat: Annotated[float, Field(ge=-90, le=90)] | None
    lon: Annotated[float, Field(ge=-180, le=180)] | None
    alt_m: float | None = None
    speed_mps: NonNegFloat | None
    heading_deg: float | None
    fix_quality: str
    fix_mode: str | None = None
    satellites: int | None = None
    fix_time: str | None = None
    age_s: NonNegFloat | None
    source: str = ""


class Crack(BaseModel):
    model_config = _STRICT

    track_id: Annotated[str, Field(min_length=1)]
    first_sighting: bool
    type: Literal["longitudinal", "transverse", "diagonal", "alligator"]
    severity: Literal["low", "medium", "high"]
    length_m: NonNegFloat
    length_mm: NonNegFloat = 0.0
    length_px: NonNegFloat
    width_mean_mm: NonNegFloat
    width_max_mm: NonNegFloat
    width_mean_px: NonNegFloat = 0.0
    width_max_px: NonNegFloat = 0.0
    area_m2: NonNegFloat
    area_px: NonNegInt
    orientation_deg: Annotated[float, Field(ge=-180, le=180)]
    bbox_px: Annotated[list[int], Field(min_length=4, max_length=4)]
    polyline_px: list[tuple[int, int]]
    confidence: Annotated[float, Field(ge=0, le=1)] | None = None
    branch_points: NonNegInt = 0
    loops: NonNegInt = 0


class CameraBlock(BaseModel):
    """v2 only: how the image lies on the road (see office.geo)."""

    model_config = _STRICT

    gsd_x_mm_per_px: Annotated[float, Field(gt=0)]
    gsd_y_mm_per_px: Annotated[float, Field(gt=0)]
    forward: Literal["up", "down", "left", "right"]
    offset_forward_m: float = 0.0
    offset_right_m: float = 0.0


class Detection(Envelope):
    """One detections message; ``camera`` is required from schema_version 2 (checked by the caller)."""

    frame: Frame
    model: ModelInfo
    inference_ms: NonNegFloat
    position: Position
    crack_count: NonNegInt
    new_crack_count: NonNegInt
    crack_pixel_fraction: Annotated[float, Field(ge=0, le=1)]
    cracks: list[Crack]
    cracks_omitted: NonNegInt
    # default None is never validated, an explicit ``"camera": null`` is (and refused, as by the schema)
    camera: CameraBlock = None  # type: ignore[assignment]
