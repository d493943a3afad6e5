"""Calibration data for INT8: frames at the artifact's own size, made from real photographs.

Why at the artifact's size: the activation ranges of a 720x1280 graph are set by what a
720x1280 frame holds; feeding it padded 360x360 photographs would calibrate it on mirrored
borders. Frames are mosaics of whole calibration photographs at their native scale
(``converters.mosaic``): cracks keep the width the camera gives them.

Readers follow onnxruntime's ``CalibrationDataReader`` protocol (``get_next()`` returning
``{input_name: array}`` or None, and ``rewind()``); the TFLite quantizer consumes the same
protocol through ``iter_batches``. Plug your own reader to calibrate on other data. What a
batch holds is what the fp32 graph takes:
- frame-input graphs (contract ``input_dtype: uint8``): ``[1,H,W,3]`` uint8 BGR frames, as
  the camera delivers them (``iter_batches`` casts them to float32 for TFLite);
- float-input graphs (``input_dtype: float32``): ``[1,3,H,W]`` float32, normalised by the
  runtime's ``InputAdapter`` (transposed to NHWC for TFLite).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from converters.errors import ConvertError
from converters.mosaic import MosaicItem, iter_mosaics, stable_order
from edge_agent.contract import InferenceContract


@runtime_checkable
class CalibrationReader(Protocol):
    """What the quantizers need: one batch per call (see the module docstring), None at the end."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...

    def rewind(self) -> None: ...


def calibration_images(folder: str | Path, count: int | None = None, split: str = "train") -> list[Path]:
    """Images of ``folder`` in a stable pseudo-random order (by stem hash), at most ``count``.

    A labeled folder (``images/`` + ``masks/``) contributes its ``split`` part only, so a
    model is never calibrated on the images it is validated on.
    """
    from edge_agent.imageio import list_images
    from reference_model.dataset import list_pairs, select_split

    folder = Path(folder)
    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        try:
            paths = [s.image_path for s in select_split(list_pairs(folder), split)]
        except FileNotFoundError as exc:
            raise ConvertError(f"calibration data: {exc}") from exc
    elif (folder / "images").is_dir():
        paths = list_images(folder / "images")
    elif folder.is_dir():
        paths = list_images(folder)
    else:
        raise ConvertError(f"calibration folder {folder} does not exist")
    if not paths:
        raise ConvertError(f"calibration folder {folder}: no images in the '{split}' split")
    return stable_order(paths)[:count]


class ImageFolderCalibrationReader:
    """``count`` frames at the contract's input size, mosaicked from a folder's photographs.

    One folder or several (their photographs interleaved, each folder in its stable order).
    Frames are built once and kept (uint8: 2.8 MB per 720x1280 frame).
    """

    def __init__(self, folder: str | Path | list[Path], contract: InferenceContract, count: int = 64,
                 split: str = "train", input_name: str | None = None):
        if count < 1:
            raise ConvertError("--calib-count must be at least 1")
        if contract.input_size is None:
            raise ConvertError("calibration needs a fixed input size (the artifact's)")
        folders = [Path(f) for f in folder] if isinstance(folder, list | tuple) else [Path(folder)]
        per_folder = [calibration_images(f, None, split) for f in folders]
        interleaved = [p for group in _interleave(per_folder) for p in group]
        self.paths = interleaved
        self.contract = contract
        self.count = count
        self.input_name = input_name or ("frame" if contract.input_dtype == "uint8" else "image")
        self._frames: list[np.ndarray] | None = None
        self._pos = 0

    def frames(self) -> list[np.ndarray]:
        """The HxWx3 uint8 BGR frames (built on first use)."""
        if self._frames is None:
            size = self.contract.input_size
            assert size is not None
            items = [MosaicItem(p) for p in self.paths]
            self._frames = [m.frame for m in iter_mosaics(items, size, limit=self.count)]
        return self._frames

    def __len__(self) -> int:
        return len(self.frames())

    def adapted(self, contract: InferenceContract) -> ImageFolderCalibrationReader:
        """The same frames, fed the way a graph with ``contract`` takes them (frames or normalised)."""
        if contract.input_dtype == self.contract.input_dtype and contract.color_order == self.contract.color_order:
            return self
        self.frames()  # built here, so the twin shares them
        twin = copy.copy(self)
        twin.contract = self.contract.model_copy(update={"input_dtype": contract.input_dtype,
                                                         "color_order": contract.color_order,
                                                         "mean": contract.mean, "std": contract.std})
        twin.input_name = "frame" if contract.input_dtype == "uint8" else "image"
        twin._pos = 0
        return twin

    def batch(self, frame: np.ndarray) -> np.ndarray:
        """What the fp32 graph takes for ``frame`` (see the module docstring)."""
        if self.contract.input_dtype == "uint8":
            return np.ascontiguousarray(frame[None])
        from edge_agent.detectors.preprocess import InputAdapter

        pre = InputAdapter(self.contract.model_copy(update={"layout": "NCHW"}))
        return pre.to_layout(pre.normalize(frame))

    def get_next(self) -> dict[str, np.ndarray] | None:
        frames = self.frames()
        if self._pos >= len(frames):
            return None
        frame = frames[self._pos]
        self._pos += 1
        return {self.input_name: self.batch(frame)}

    def rewind(self) -> None:
        self._pos = 0


def _interleave(groups: list[list[Path]]) -> Iterator[list[Path]]:
    """Round-robin over folders, one photograph at a time (a folder's sizes stay together in mosaics)."""
    longest = max((len(g) for g in groups), default=0)
    for i in range(longest):
        yield [g[i] for g in groups if i < len(g)]


def iter_batches(reader: CalibrationReader, layout: str = "NCHW", dtype: str | None = None) -> Iterator[np.ndarray]:
    """Every batch of a reader (from the start), as a graph with ``layout`` and input ``dtype`` takes it.

    uint8 NHWC frames become float32 NHWC pixels for a float frame graph (TFLite); float
    NCHW batches are transposed for an NHWC float graph.
    """
    reader.rewind()
    while (feed := reader.get_next()) is not None:
        if len(feed) != 1:
            raise ConvertError(f"calibration reader gave {len(feed)} inputs; the model has one image input")
        batch = np.asarray(next(iter(feed.values())))
        if batch.ndim != 4 or 3 not in (batch.shape[1], batch.shape[3]):
            raise ConvertError(f"calibration batch shape {batch.shape} is not 1xHxWx3 (frames) or 1x3xHxW")
        if batch.dtype == np.uint8:
            if batch.shape[3] != 3:
                raise ConvertError(f"uint8 calibration frames must be 1xHxWx3, got {batch.shape}")
            yield batch if dtype == "uint8" else batch.astype(np.float32)
            continue
        batch = batch.astype(np.float32, copy=False)
        yield np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if layout == "NHWC" and batch.shape[1] == 3 else batch


class CountingReader:
    """Wraps a user reader: counts batches and reports progress, so an empty reader is caught."""

    def __init__(self, reader: CalibrationReader, progress=None):
        self.reader, self.count, self.progress = reader, 0, progress

    def get_next(self):
        item = self.reader.get_next()
        if item is not None:
            self.count += 1
            if self.progress is not None:
                self.progress.update(1)
        return item

    def rewind(self):
        self.reader.rewind()
