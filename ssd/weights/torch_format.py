"""Reads a PyTorch `torch.save` file holding a state_dict into numpy arrays, without PyTorch.

Since PyTorch 1.6, `torch.save` writes a zip archive whose entries sit under one top folder
`<archive>/`: `data.pkl` (the pickled object), `data/<key>` (the raw bytes of each storage,
stored uncompressed), `byteorder` ("little" or "big"; files from before PyTorch 1.10 lack it and
are little-endian) and bookkeeping records (`version`, `.format_version`, ...). The pickle names
storages by persistent ids `('storage', torch.<Type>Storage, key, location, numel)` and rebuilds
tensors with `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.

Unpickling calls whatever the pickle names, so the unpickler here resolves only the few globals a
state_dict needs (`ALLOWED_GLOBALS`), each to a stand-in defined in this module; any other global
is refused before anything is called. Tensors become C-contiguous numpy arrays in the file's key
order (bfloat16, which numpy lacks, becomes float32); device locations ("cuda:0") are ignored.

    weights = read_state_dict("ssd300_vgg16_coco-b556d3b4.pth")  # {name: np.ndarray}
"""

import collections
import io
import math
import pickle
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np


class TorchFormatError(ValueError):
    """The file is not a torch.save state_dict this module can read; the message says why."""


# The typed storage classes torch.save names (torch/storage.py, _dtype_to_storage_type_map), as
# little-endian numpy dtypes. bfloat16 is read as raw bits ("u2"). Quantized storages are absent.
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "ComplexDoubleStorage": "<c16",
    "ComplexFloatStorage": "<c8",
}
# The legacy format (PyTorch < 1.6, or _use_new_zipfile_serialization=False) starts with this magic
# number, pickled as a 10-byte little-endian long.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_CHUNK = 1 << 24
_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error)  # what a damaged entry raises


class _StorageType:
    """Stands in for torch.FloatStorage & co.: it only tells the element dtype of a storage."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


# A storage the pickle names (its bytes are read from `data/<key>` only when needed), and what
# `_rebuild_tensor_v2` returns: a strided view on a storage, made an array only at the end, so
# that storages outside the chosen state_dict (an optimizer's, say) are never read.
_Storage = collections.namedtuple("_Storage", "key type numel")
_Tensor = collections.namedtuple("_Tensor", "storage offset size stride metadata")


def _is_ints(values):
    return isinstance(values, tuple) and all(type(v) is int and v >= 0 for v in values)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    if not (isinstance(storage, _Storage) and type(storage_offset) is int and storage_offset >= 0
            and _is_ints(size) and _is_ints(stride) and len(size) == len(stride)
            and (metadata is None or isinstance(metadata, dict))):
        raise TorchFormatError("has a tensor with a malformed storage, offset, size or stride")
    return _Tensor(storage, storage_offset, size, stride, metadata or {})


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, _Tensor):
        raise TorchFormatError("has a parameter whose data is not a tensor")
    return data  # a Parameter is only its tensor here


# The globals a state_dict's pickle names, each resolved to its stand-in here; nothing else loads.
_FUNCTIONS = {"collections.OrderedDict": collections.OrderedDict,
              "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
              "torch._utils._rebuild_parameter": _rebuild_parameter}
ALLOWED_GLOBALS = (*_FUNCTIONS, *(f"torch.{name}" for name in _STORAGE_DTYPES))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.storages = {}

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in _FUNCTIONS:
            return _FUNCTIONS[full]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        hint = ""
        if module.startswith(("torch.nn", "__main__", "__torch__", "torchvision")):
            hint = " (a whole pickled model? save its model.state_dict() instead)"
        raise TorchFormatError(
            f"refuses to load global {full!r}: a state_dict holds only tensors{hint}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[3], str) and type(pid[4]) is int and pid[4] >= 0):
            raise TorchFormatError(f"has an unexpected persistent id {str(pid)[:100]}")
        _, storage_type, key, _location, numel = pid
        storage = self.storages.setdefault(key, _Storage(key, storage_type, numel))
        if storage.type.name != storage_type.name or storage.numel != numel:
            raise TorchFormatError(f"names storage {key!r} with two dtypes or sizes")
        return storage


def _select(top, key):
    """The state_dict in the unpickled object, or an error that says what the file holds."""
    if key is not None:
        if not isinstance(top, Mapping):
            raise TorchFormatError(f"holds a {type(top).__name__} object: key= does not apply")
        if key not in top:
            raise TorchFormatError(f"has no key {key!r} (its keys: {', '.join(map(repr, top))})")
        top = top[key]
    if isinstance(top, _Tensor):
        raise TorchFormatError("holds a single tensor, not a state_dict (names -> tensors)")
    if not isinstance(top, Mapping):
        raise TorchFormatError(
            f"holds a {type(top).__name__} object, not a state_dict (names -> tensors)")
    for name, value in top.items():
        if isinstance(name, str) and isinstance(value, _Tensor):
            continue
        if not isinstance(name, str):
            raise TorchFormatError(f"is not a state_dict: its key {name!r} is not a string")
        # A checkpoint such as {"model": state_dict, "epoch": 3}: point at the state_dicts in it.
        inner = [repr(k) for k, v in top.items() if isinstance(v, Mapping) and v
                 and all(isinstance(t, _Tensor) for t in v.values())]
        if inner and key is None:
            raise TorchFormatError(
                f"holds a checkpoint dict (keys {', '.join(map(repr, top))}), not a state_dict; "
                f"a state_dict is under {' and '.join(inner)}: pass key={inner[0]} to read it")
        raise TorchFormatError(f"is not a state_dict: the value of {name!r} is not a tensor "
                               f"but a {type(value).__name__} object")
    return top


def _read_storage(archive, prefix, storage):
    """The storage's bytes in one writable buffer, read in chunks (no second full copy)."""
    name = f"{prefix}data/{storage.key}"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise TorchFormatError(f"has no entry {name!r} for storage {storage.key!r}") from None
    expected = storage.numel * storage.type.dtype.itemsize
    if info.file_size != expected:
        raise TorchFormatError(
            f"has a truncated or damaged storage {name!r}: {info.file_size} bytes where its "
            f"{storage.numel} {storage.type.name} elements need {expected}")
    buffer = bytearray(expected)
    view, position = memoryview(buffer), 0
    with archive.open(info) as entry:  # zipfile checks the CRC on reaching the entry's end
        while position < expected:
            chunk = entry.read(min(_CHUNK, expected - position))
            if not chunk:
                raise TorchFormatError(f"has a truncated storage {name!r}")
            view[position:position + len(chunk)] = chunk
            position += len(chunk)
        entry.read(1)  # reaches the end for the CRC check (a no-op on an empty entry)
    return buffer


def _to_array(tensor, buffer, byteorder, sole_view):
    storage, size, stride = tensor.storage, tensor.size, tensor.stride
    dtype = storage.type.dtype.newbyteorder(byteorder)
    flat = np.frombuffer(buffer, dtype=dtype)
    # The last element the view reaches must lie in the storage (torch only writes stride >= 0).
    last = tensor.offset + sum((n - 1) * s for n, s in zip(size, stride))
    if (math.prod(size) and last >= storage.numel) or tensor.offset > storage.numel:
        raise TorchFormatError(
            f"has a tensor (offset {tensor.offset}, size {size}, stride {stride}) reaching past "
            f"the end of its storage {storage.key!r} of {storage.numel} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.offset:], shape=size, strides=[s * dtype.itemsize for s in stride],
        writeable=False)
    if storage.type.name == "BFloat16Storage":  # bfloat16 is the top half of a float32
        array = np.array(view, dtype=np.uint32, order="C")
        array <<= 16
        array = array.view(np.float32)
    elif sole_view and dtype.isnative and view.flags.c_contiguous and view.nbytes == len(buffer):
        array = flat.reshape(size)  # the whole storage is this tensor's alone: no copy needed
    else:
        array = np.array(view, dtype=dtype.newbyteorder("="), order="C")
    if tensor.metadata.get("conj"):  # torch saves a lazy conjugate as the storage plus this bit
        array = np.conj(array)
    if tensor.metadata.get("neg"):
        array = np.negative(array)
    return array


def read_state_dict(path, key=None):
    """The tensors of the state_dict saved by `torch.save` at `path`, in the file's key order.

    key: for a checkpoint dict such as {"model": state_dict, "epoch": 3}, the key of its
    state_dict. Raises TorchFormatError, naming the file and the problem, for anything else.
    """
    try:
        return _read(path, key)
    except TorchFormatError as error:
        raise TorchFormatError(f"{path}: {error}") from None


def _read(path, key):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as file:
            head = file.read(64)
        if _LEGACY_MAGIC in head:
            raise TorchFormatError(
                "was saved with _use_new_zipfile_serialization=False (or by PyTorch < 1.6), a "
                "legacy format this reader does not read: re-save it with a current PyTorch, "
                "torch.save(torch.load(path), path)") from None
        if head.startswith(b"PK"):
            raise TorchFormatError("is a truncated or damaged zip archive") from None
        raise TorchFormatError("is not a torch.save file (not a zip archive)") from None
    with archive:
        try:
            return _read_archive(archive, key)
        except _ZIP_ERRORS as error:
            raise TorchFormatError(f"is a damaged zip archive ({error})") from None


def _read_archive(archive, key):
    names = archive.namelist()
    prefix = names[0].split("/")[0] + "/" if names else ""  # torch's own rule: the first entry's
    if f"{prefix}data.pkl" not in names:
        raise TorchFormatError("has no data.pkl: a zip archive, but not a torch.save file")
    byteorder = archive.read(f"{prefix}byteorder") if f"{prefix}byteorder" in names else b"little"
    if byteorder not in (b"little", b"big"):
        raise TorchFormatError(f"has an unknown byteorder record {byteorder[:20]!r}")
    pickled = archive.read(f"{prefix}data.pkl")
    try:
        top = _Unpickler(io.BytesIO(pickled)).load()
    except TorchFormatError:
        raise
    except Exception as error:  # a damaged pickle can fail in many ways; none runs code
        raise TorchFormatError(f"has a damaged data.pkl ({type(error).__name__}: {error})") \
            from None
    state_dict, order = _select(top, key), "<" if byteorder == b"little" else ">"
    # Each storage is read once, and dropped after the last tensor that views it.
    users = collections.Counter(tensor.storage.key for tensor in state_dict.values())
    buffers, result = {}, {}
    for name, tensor in state_dict.items():
        storage_key = tensor.storage.key
        if storage_key not in buffers:
            buffers[storage_key] = _read_storage(archive, prefix, tensor.storage)
        result[name] = _to_array(tensor, buffers[storage_key], order, users[storage_key] == 1)
        users[storage_key] -= 1
        if not users[storage_key]:
            del buffers[storage_key]
    return result
