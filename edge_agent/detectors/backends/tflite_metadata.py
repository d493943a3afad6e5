"""Read and write the inference contract inside a .tflite file's flatbuffer metadata.

Why here and not in TensorFlow: the device runtime must read the contract from a raw
.tflite without TensorFlow (too big for a Pi). The LiteRT flatbuffer schema already has a
``metadata`` table (name -> buffer index); a JSON contract in a named entry is enough.
Only the ``flatbuffers`` package and ``ai_edge_litert.schema_py_generated`` are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_agent.contract import CONTRACT_METADATA_KEY, InferenceContract
from edge_agent.errors import UserError

TFLITE_FILE_IDENTIFIER = b"TFL3"


class TFLiteMetadataError(UserError, ValueError):
    """The file is not a TFLite flatbuffer this module can read or rewrite."""


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:  # pragma: no cover - depends on the device install
        raise TFLiteMetadataError("reading TFLite metadata needs ai-edge-litert: pip install "
                                  "'crackseg-edge[tflite]'") from exc
    return schema


def _read_model(data: bytes, path: Path):
    schema = _schema()
    if len(data) < 8 or data[4:8] != TFLITE_FILE_IDENTIFIER:
        raise TFLiteMetadataError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier); "
                                  "re-export it with crackseg-convert export-tflite")
    try:
        return schema.Model.GetRootAsModel(data, 0)
    except Exception as exc:
        raise TFLiteMetadataError(f"{path}: corrupt TFLite flatbuffer ({exc})") from exc


def read_metadata(path: str | Path, name: str) -> bytes | None:
    """The bytes of the metadata entry ``name``, or None when the model has none."""
    path = Path(path)
    data = path.read_bytes()
    model = _read_model(data, path)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is not None and entry.Name().decode("utf-8", "replace") == name:
            buf = model.Buffers(entry.Buffer())
            if buf is None:
                raise TFLiteMetadataError(f"{path}: metadata '{name}' points to a missing buffer")
            if buf.Offset() > 1:  # data stored after the flatbuffer (models > 2 GB)
                return bytes(data[buf.Offset():buf.Offset() + buf.Size()])
            return buf.DataAsNumpy().tobytes() if not buf.DataIsNone() else b""
    return None


def read_contract(path: str | Path) -> InferenceContract | None:
    """The contract stored by :func:`write_contract`, or None when the model has none."""
    raw = read_metadata(path, CONTRACT_METADATA_KEY)
    if raw is None:
        return None
    try:
        return InferenceContract.from_json(raw.decode("utf-8"))
    except Exception as exc:
        raise TFLiteMetadataError(f"{path}: metadata '{CONTRACT_METADATA_KEY}' is not a valid inference "
                                  f"contract ({str(exc).splitlines()[0]}); re-export the model") from exc


def write_metadata(path: str | Path, name: str, value: bytes, out_path: str | Path | None = None) -> Path:
    """Add or replace the metadata entry ``name`` (atomic rewrite of the file)."""
    import flatbuffers

    schema = _schema()
    path = Path(path)
    out_path = Path(out_path) if out_path is not None else path
    data = path.read_bytes()
    model = schema.ModelT.InitFromObj(_read_model(data, path))
    if any(getattr(b, "offset", 0) > 1 for b in (model.buffers or [])):
        raise TFLiteMetadataError(f"{path}: stores tensor data outside the flatbuffer (a model > 2 GB); "
                                  "adding metadata to it is not supported")
    model.buffers = model.buffers or []
    model.metadata = model.metadata or []
    payload = np.frombuffer(value, dtype=np.uint8)
    existing = [m for m in model.metadata if (m.name.decode() if isinstance(m.name, bytes) else m.name) == name]
    if existing:
        model.buffers[existing[0].buffer].data = payload
    else:
        buffer = schema.BufferT()
        buffer.data = payload
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(max(1024, len(data) + len(value) + 1024))
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(bytes(builder.Output()))
    os.replace(tmp, out_path)
    return out_path


def write_contract(path: str | Path, contract: InferenceContract, out_path: str | Path | None = None) -> Path:
    """Store ``contract`` as JSON in the metadata entry ``CONTRACT_METADATA_KEY``."""
    return write_metadata(path, CONTRACT_METADATA_KEY, contract.to_json().encode("utf-8"), out_path)
