"""Read Caffe ``.caffemodel`` weight files without Caffe or protobuf.

A ``.caffemodel`` is one binary protobuf ``NetParameter`` (caffe.proto).
This module decodes the wire format itself and keeps what a weight converter
needs: the net's name and, for each layer in file order, its name, type and
parameter blobs as float32 arrays shaped as Caffe stores them (``(out, in,
kh, kw)`` for convolution weights).  Everything else is skipped.  Both the
current ``layer`` field (``LayerParameter``) and the legacy ``layers`` field
(``V1LayerParameter``, whose enum types are mapped to the type strings
Caffe's own upgrade gives them: ``"Convolution"`` in either layout) are read.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

__all__ = ["CaffeFormatError", "CaffeLayer", "CaffeNet", "read_caffemodel"]


class CaffeFormatError(ValueError):
    """The input is not a readable ``.caffemodel``; the message says why."""


@dataclasses.dataclass
class CaffeLayer:
    """One layer: ``blobs`` are float32 arrays shaped as stored in the file."""

    name: str
    type: str
    blobs: list[np.ndarray]


@dataclasses.dataclass
class CaffeNet:
    """A whole file: the net's name and its layers in file order."""

    name: str
    layers: list[CaffeLayer]


# V1LayerParameter.LayerType values 0..39 -> the type strings caffe's
# UpgradeV1LayerType (upgrade_proto.cpp) gives them; NONE (0) becomes "".
_V1_TYPES = dict(enumerate([""] + """
    Accuracy BNLL Concat Convolution Data Dropout EuclideanLoss Flatten HDF5Data
    HDF5Output Im2col ImageData InfogainLoss InnerProduct LRN MultinomialLogisticLoss
    Pooling ReLU Sigmoid Softmax SoftmaxWithLoss Split TanH WindowData Eltwise Power
    SigmoidCrossEntropyLoss HingeLoss MemoryData ArgMax Threshold DummyData Slice MVN
    AbsVal Silence ContrastiveLoss Exp Deconvolution""".split()))

# Formats sometimes mistaken for a .caffemodel, named in the error.
_MAGICS = {b"\x89HDF\r\n\x1a\n": "an HDF5 file (as .caffemodel.h5 snapshots are)",
           b"PK\x03\x04": "a zip archive"}

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}


def read_caffemodel(path_or_bytes) -> CaffeNet:
    """Parse a ``.caffemodel`` from a path or from bytes-like content.

    Raises ``CaffeFormatError`` (a ``ValueError``) naming the file and the
    problem when the content is not a binary ``NetParameter`` with layers.
    The returned arrays are fresh float32 copies: they do not alias the
    input and the file's bytes are not kept alive by them.
    """
    if isinstance(path_or_bytes, (str, os.PathLike)):
        label = os.fspath(path_or_bytes)
        with open(label, "rb") as f:
            content = f.read()
    else:
        label, content = "<caffemodel bytes>", path_or_bytes
    # A memoryview so that every sub-message and blob is sliced, not copied.
    buf = memoryview(content).cast("B")
    try:
        return _parse_net(buf)
    except CaffeFormatError as error:
        head = bytes(buf[:64])
        text = head and all(32 <= c < 127 or c in b"\t\r\n" for c in head)
        hint = " (it looks like text, e.g. a .prototxt, which holds no weights)"
        raise CaffeFormatError(f"{label}: {error}{hint if text else ''}") from None


def _varint(buf, pos, end, where):
    """Decode the varint at ``buf[pos:end]``: (unsigned value, next pos)."""
    value = shift = 0
    while True:
        if pos >= end:
            raise CaffeFormatError(f"{where}: truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:  # protobuf varints are at most 10 bytes long
            raise CaffeFormatError(f"{where}: varint longer than 10 bytes at byte {pos}")


def _signed(value):
    """Reinterpret a varint's 64 bits as a two's complement int64/int32."""
    value &= (1 << 64) - 1  # a 10th varint byte may carry bits beyond 64
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf, pos, end, where):
    """Yield ``(field, wire, a, b)`` for each field of the message ``buf[pos:end]``.

    varint: ``a`` is the value; length-delimited: ``buf[a:b]`` is the payload;
    fixed32/64: ``a`` is the bytes of the values of the whole run of records
    of that field starting there (how an unpacked repeated float is written).
    Lengths are checked against ``end``: a message never reads past itself.
    Callers skip unknown fields by ignoring them (no recursion into them).
    """
    while pos < end:
        key, start = _varint(buf, pos, end, where)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise CaffeFormatError(f"{where}: invalid field number 0 at byte {pos}")
        if wire == _VARINT:
            value, pos = _varint(buf, start, end, where)
            yield field, wire, value, None
            continue
        if wire not in (_LEN, _FIXED32, _FIXED64):  # 3/4: deprecated groups
            raise CaffeFormatError(
                f"{where}: unsupported wire type {wire} (field {field}) at byte {pos}")
        if wire == _LEN:
            size, start = _varint(buf, start, end, where)
        else:
            size = 4 if wire == _FIXED32 else 8
        if size > end - start:
            raise CaffeFormatError(
                f"{where}: field {field} at byte {pos} needs {size} bytes, "
                f"only {end - start} left")
        if wire == _LEN:
            pos = start + size
            yield field, wire, start, pos
        else:
            values, pos = _fixed_run(buf, pos, end, start - pos, size)
            yield field, wire, values, None


def _fixed_run(buf, pos, end, key_size, size):
    """(values' bytes, end) of the records at ``pos`` that repeat its key.

    One record per Python loop turn would take minutes for a big unpacked
    blob, so the run is found and gathered with numpy, looking ahead in
    doubling windows so that an isolated fixed-width field stays cheap.
    """
    record = key_size + size
    key = np.frombuffer(buf[pos:pos + key_size], np.uint8)
    count, window, room = 1, 16, (end - pos) // record
    while count < room:
        more = min(window, room - count)
        rows = np.frombuffer(buf[pos + count * record:pos + (count + more) * record], np.uint8)
        same = (rows.reshape(more, record)[:, :key_size] == key).all(axis=1)
        count += more if same.all() else int(same.argmin())
        if not same.all():
            break
        window *= 2
    rows = np.frombuffer(buf[pos:pos + count * record], np.uint8).reshape(count, record)
    return rows[:, key_size:].tobytes(), pos + count * record


def _expect(wire, allowed, what, where):
    if wire not in allowed:
        expected = " or ".join(_WIRE_NAMES[w] for w in allowed)
        raise CaffeFormatError(
            f"{where}: {what} has wire type {_WIRE_NAMES.get(wire, wire)}, expected {expected}")


def _string(buf, wire, a, b, what, where):
    _expect(wire, (_LEN,), what, where)
    # proto2 strings are not validated by Caffe either: keep odd bytes visible.
    return bytes(buf[a:b]).decode("utf-8", "backslashreplace")


def _parse_net(buf):
    if not len(buf):
        raise CaffeFormatError("the file is empty")
    for magic, kind in _MAGICS.items():
        if bytes(buf[: len(magic)]) == magic:
            raise CaffeFormatError(f"this is {kind}, not a binary protobuf .caffemodel")
    name, layers = "", []
    for field, wire, a, b in _fields(buf, 0, len(buf), "net"):
        if field == 1:
            name = _string(buf, wire, a, b, "the net name", "net")
        elif field in (100, 2):  # `layer` (current) and `layers` (V1), in file order
            where = f"layer #{len(layers)}"
            _expect(wire, (_LEN,), "a layer", where)
            layers.append(_parse_layer(buf, a, b, field == 2, where))
    if not layers:
        raise CaffeFormatError("no layers found: not a .caffemodel NetParameter")
    return CaffeNet(name, layers)


def _parse_layer(buf, start, end, legacy, where):
    # V1LayerParameter numbers its fields differently (and 7 is blobs_lr there).
    name_field, type_field, blobs_field = (4, 5, 6) if legacy else (1, 2, 7)
    name, type_, blob_ranges = "", "", []
    for field, wire, a, b in _fields(buf, start, end, where):
        if field == name_field:
            name = _string(buf, wire, a, b, "the layer name", where)
        elif field == type_field and legacy:
            _expect(wire, (_VARINT,), "the V1 layer type", where)
            type_ = _V1_TYPES.get(a, f"V1:{_signed(a)}")
        elif field == type_field:
            type_ = _string(buf, wire, a, b, "the layer type", where)
        elif field == blobs_field:
            _expect(wire, (_LEN,), "a blob", where)
            blob_ranges.append((a, b))
    # Blobs are decoded once the whole layer is read, so errors can name it.
    where = f"layer {name!r}" if name else where
    blobs = [_parse_blob(buf, a, b, f"{where}: blob {i}")
             for i, (a, b) in enumerate(blob_ranges)]
    return CaffeLayer(name, type_, blobs)


def _parse_blob(buf, start, end, where):
    # data (5, floats) and double_data (8, doubles): packed slices or unpacked runs
    chunks, dims, legacy = {5: [], 8: []}, None, {}
    for field, wire, a, b in _fields(buf, start, end, where):
        if field in chunks:
            item, what = (4, "data") if field == 5 else (8, "double_data")
            _expect(wire, (_LEN, _FIXED32 if item == 4 else _FIXED64), what, where)
            if wire == _LEN and (b - a) % item:
                raise CaffeFormatError(f"{where}: packed {what} of {b - a} bytes "
                                       f"at byte {a} is not a multiple of {item}")
            chunks[field].append(buf[a:b] if wire == _LEN else a)
        elif field == 7:
            _expect(wire, (_LEN,), "shape", where)
            # A message field seen twice is merged: its repeated dims concatenate.
            dims = (dims or []) + _parse_shape(buf, a, b, where)
        elif field in (1, 2, 3, 4):  # legacy num, channels, height, width
            _expect(wire, (_VARINT,), "a legacy dimension", where)
            legacy[field] = _signed(a)
    # Writers emit either `shape` (current) or the 4 legacy dims, never both;
    # Caffe reads all four legacy dims, an absent one being 0.
    shape = tuple(dims if dims is not None else
                  [legacy.get(f, 0) for f in (1, 2, 3, 4)] if legacy else ())
    if any(d < 0 for d in shape):
        raise CaffeFormatError(f"{where}: negative dimension in shape {shape}")
    # Like Caffe's Blob::FromProto: double_data, when not empty, replaces data.
    field, item = (8, 8) if any(len(c) for c in chunks[8]) else (5, 4)
    count = sum(len(c) for c in chunks[field]) // item
    if count != math.prod(shape):
        raise CaffeFormatError(
            f"{where} holds {count} values, its shape {shape} needs {math.prod(shape)}")
    parts = chunks[field]
    raw = parts[0] if len(parts) == 1 else bytearray().join(parts)
    # np.array copies (and converts doubles): the blob owns aligned memory.
    return np.array(np.frombuffer(raw, f"<f{item}").reshape(shape), dtype=np.float32)


def _parse_shape(buf, start, end, where):
    dims = []
    for field, wire, a, b in _fields(buf, start, end, where):
        if field != 1:
            continue
        _expect(wire, (_VARINT, _LEN), "shape.dim", where)
        if wire == _VARINT:
            dims.append(_signed(a))
            continue
        pos = a
        while pos < b:  # packed dims: varints back to back
            value, pos = _varint(buf, pos, b, where)
            dims.append(_signed(value))
    return dims
