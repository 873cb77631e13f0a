"""Tests of ssd/weights/torch_format.py on files made by a small torch.save look-alike below.

The writer lays out the archive as PyTorch 2.x does: entries under one top folder, data.pkl
(pickle protocol 2), .format_version, .storage_alignment, byteorder, data/<key> aligned to 64
bytes by an "FB" extra field, version and .data/serialization_id. Its data.pkl for a conv + batch
norm state_dict is byte for byte the one PyTorch 2.13 wrote (TORCH_DATA_PKL), and its files load
with torch.load(weights_only=True). PyTorch itself is not needed.
"""

import base64
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from ssd.weights.torch_format import ALLOWED_GLOBALS, TorchFormatError, read_state_dict


class Global:
    """A global the pickle names (`GLOBAL module name`) without importing it."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise AssertionError("never called")


REBUILD_TENSOR = Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = Global("torch._utils", "_rebuild_parameter")
STORAGE_TYPES = {
    np.dtype("float64"): "DoubleStorage", np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage", np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage", np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage", np.dtype("complex64"): "ComplexFloatStorage",
    np.dtype("complex128"): "ComplexDoubleStorage",
}
# One object per global, so that the pickle memoizes each (as torch's does).
STORAGE_GLOBALS = {name: Global("torch", name)
                   for name in [*STORAGE_TYPES.values(), "BFloat16Storage"]}


class Storage:
    """A flat storage; bfloat16=True writes float32 values as their top 16 bits."""

    def __init__(self, values, bfloat16=False, location="cpu", numel=None):
        values = np.asarray(values).ravel()
        if bfloat16:
            self.type = "BFloat16Storage"
            self.data = (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        else:
            self.type, self.data = STORAGE_TYPES[values.dtype], values
        self.location = location
        self.numel = self.data.size if numel is None else numel


class Tensor:
    def __init__(self, storage, offset=0, size=None, stride=None, metadata=None):
        self.storage, self.offset = storage, offset
        self.size = (storage.numel,) if size is None else tuple(size)
        if stride is None:  # C order
            stride = tuple(int(np.prod(self.size[i + 1:])) for i in range(len(self.size)))
        self.stride, self.metadata = tuple(stride), metadata

    def __reduce__(self):
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return REBUILD_TENSOR, args + ((self.metadata,) if self.metadata else ())


class Parameter:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        return REBUILD_PARAMETER, (self.tensor, True, collections.OrderedDict())


def tensor(values, **kwargs):
    values = np.asarray(values)
    return Tensor(Storage(values, **kwargs), size=values.shape)


class TorchPickler(pickle._Pickler):  # the Python pickler, whose save() can be extended
    def __init__(self, file, keys):
        super().__init__(file, protocol=2)
        self.keys = keys  # id(storage) -> (storage, key), in first-use order like torch

    def save(self, obj, save_persistent_id=True):
        if not isinstance(obj, Global):
            return super().save(obj, save_persistent_id)
        if id(obj) in self.memo:
            return self.write(self.get(self.memo[id(obj)][0]))
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        key = self.keys.setdefault(id(obj), (obj, str(len(self.keys))))[1]
        return ("storage", STORAGE_GLOBALS[obj.type], key, obj.location, obj.numel)


def write_torch_file(path, obj, byteorder="little", drop=(), replace=None, pickled=None):
    """Writes `obj` as torch.save would; drop/replace alter entries (by name under the folder)."""
    keys = {}
    if pickled is None:
        buffer = io.BytesIO()
        TorchPickler(buffer, keys).dump(obj)
        pickled = buffer.getvalue()
    folder = path.stem
    records = [("data.pkl", pickled), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", byteorder.encode())]
    for storage, key in keys.values():
        order = "<" if byteorder == "little" else ">"
        records.append((f"data/{key}", storage.data.astype(storage.data.dtype.newbyteorder(order))
                        .tobytes()))
    records += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            if name in drop:
                continue
            data = (replace or {}).get(name, data)
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            # Like torch: an "FB" extra field pads the local header so the data starts 64-aligned.
            start = archive.fp.tell() + 30 + len(info.filename) + 4
            info.extra = b"FB" + struct.pack("<H", -start % 64) + b"Z" * (-start % 64)
            archive.writestr(info, data)
    return path


def read(tmp_path, obj, **kwargs):
    return read_state_dict(write_torch_file(tmp_path / "model.pth", obj, **kwargs))


class Reduce:
    """Pickles as func(*args), through the standard pickler's own naming of func."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# data.pkl of torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict()),
# written by PyTorch 2.13.0.
TORCH_DATA_PKL = base64.b64decode("""
gAJjY29sbGVjdGlvbnMKT3JkZXJlZERpY3QKcQApUnEBKFgIAAAAMC53ZWlnaHRxAmN0b3JjaC5fdXRpbHMKX3JlYnVpbGRf
dGVuc29yX3YyCnEDKChYBwAAAHN0b3JhZ2VxBGN0b3JjaApGbG9hdFN0b3JhZ2UKcQVYAQAAADBxBlgDAAAAY3B1cQdLbHRx
CFFLAChLBEsDSwNLA3RxCShLG0sJSwNLAXRxColoAClScQt0cQxScQ1YBgAAADAuYmlhc3EOaAMoKGgEaAVYAQAAADFxD2gH
SwR0cRBRSwBLBIVxEUsBhXESiWgAKVJxE3RxFFJxFVgIAAAAMS53ZWlnaHRxFmgDKChoBGgFWAEAAAAycRdoB0sEdHEYUUsA
SwSFcRlLAYVxGoloAClScRt0cRxScR1YBgAAADEuYmlhc3EeaAMoKGgEaAVYAQAAADNxH2gHSwR0cSBRSwBLBIVxIUsBhXEi
iWgAKVJxI3RxJFJxJVgOAAAAMS5ydW5uaW5nX21lYW5xJmgDKChoBGgFWAEAAAA0cSdoB0sEdHEoUUsASwSFcSlLAYVxKolo
AClScSt0cSxScS1YDQAAADEucnVubmluZ192YXJxLmgDKChoBGgFWAEAAAA1cS9oB0sEdHEwUUsASwSFcTFLAYVxMoloAClS
cTN0cTRScTVYFQAAADEubnVtX2JhdGNoZXNfdHJhY2tlZHE2aAMoKGgEY3RvcmNoCkxvbmdTdG9yYWdlCnE3WAEAAAA2cTho
B0sBdHE5UUsAKSmJaAApUnE6dHE7UnE8dX1xPVgJAAAAX21ldGFkYXRhcT5oAClScT8oWAAAAABxQH1xQVgHAAAAdmVyc2lv
bnFCSwFzWAEAAAAwcUN9cURoQksBc1gBAAAAMXFFfXFGaEJLAnN1c2Iu""")


def conv_bn_state_dict():
    """Arrays of the state_dict behind TORCH_DATA_PKL, and that state_dict for the writer."""
    rng = np.random.default_rng(0)
    arrays = {"0.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32)}
    for name in ["0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]:
        arrays[name] = rng.normal(size=4).astype(np.float32)
    arrays["1.num_batches_tracked"] = np.array(5, np.int64)
    state = collections.OrderedDict((name, tensor(array)) for name, array in arrays.items())
    state._metadata = collections.OrderedDict([("", {"version": 1}), ("0", {"version": 1}),
                                               ("1", {"version": 2})])
    return arrays, state


def test_the_writer_matches_torch_and_the_reader_reads_torchs_pickle(tmp_path):
    arrays, state = conv_bn_state_dict()
    path = write_torch_file(tmp_path / "sequential.pt", state)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        assert archive.read("sequential/data.pkl") == TORCH_DATA_PKL
        assert archive.namelist() == ["sequential/" + name for name in [
            "data.pkl", ".format_version", ".storage_alignment", "byteorder", *(
                f"data/{key}" for key in range(7)), "version", ".data/serialization_id"]]
        for info in archive.infolist():  # each entry's data starts 64-byte aligned
            name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:][:4])
            assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0
    got = read_state_dict(write_torch_file(tmp_path / "sequential.pt", state,
                                           replace={"data.pkl": TORCH_DATA_PKL}))
    assert list(got) == list(arrays)
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.int32,
                                   np.int16, np.int8, np.uint8, np.bool_, np.complex64,
                                   np.complex128])
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_every_dtype_in_either_byteorder(tmp_path, dtype, byteorder):
    values = (np.arange(-6, 6).reshape(3, 4) * 37).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        values = values + 0.5j
    got = read(tmp_path, {"t": tensor(values)}, byteorder=byteorder)["t"]
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, values)


def test_bfloat16_becomes_float32(tmp_path):
    values = np.array([[1.0, -2.5, 3.140625], [np.inf, -0.0, 2.0**100]], np.float32)  # exact
    got = read(tmp_path, {"t": tensor(values, bfloat16=True)})["t"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values)
    big_endian = read(tmp_path, {"t": tensor(values, bfloat16=True)}, byteorder="big")["t"]
    assert big_endian.tobytes() == values.tobytes()


def test_strided_views_and_shared_storages(tmp_path):
    base = np.arange(30, dtype=np.float32).reshape(5, 6)
    storage = Storage(base)
    state = collections.OrderedDict([
        ("base", Tensor(storage, 0, (5, 6))),
        ("transposed", Tensor(storage, 0, (6, 5), (1, 6))),
        ("slice", Tensor(storage, 1 * 6 + 2, (3, 3), (6, 1))),
        ("column", Tensor(storage, 3, (5,), (6,))),
        ("expanded", Tensor(storage, 4, (3, 2), (0, 1))),
        ("scalar", Tensor(storage, 29, (), ())),
        ("empty", Tensor(Storage(np.zeros(0, np.float32)), 0, (0, 3), (3, 1))),
    ])
    got = read(tmp_path, state)
    expected = {"base": base, "transposed": base.T, "slice": base[1:4, 2:5], "column": base[:, 3],
                "expanded": np.broadcast_to(base.ravel()[4:6], (3, 2)), "scalar": base.ravel()[29],
                "empty": np.zeros((0, 3), np.float32)}
    for name, array in got.items():
        assert array.shape == np.shape(expected[name]), name
        np.testing.assert_array_equal(array, expected[name])
        assert array.flags.c_contiguous and array.flags.writeable, name
    got["base"][0, 0] = 100.0  # each tensor is its own array, as after torch.load + numpy().copy()
    assert got["transposed"][0, 0] == 0.0


def test_a_tensor_alone_on_its_storage_is_not_copied_twice(tmp_path):
    got = read(tmp_path, {"a": tensor(np.arange(6, dtype=np.int32).reshape(2, 3))})["a"]
    assert got.flags.writeable and got.flags.c_contiguous and got.base is not None


def test_key_order_parameters_locations_and_metadata(tmp_path):
    state = collections.OrderedDict()
    for name in ["z.weight", "a.bias", "m.running_var", "b.num_batches_tracked"]:
        state[name] = tensor(np.full(2, len(name), np.float32), location="cuda:0")
    state["b.num_batches_tracked"] = tensor(np.array(7, np.int64))
    state["p"] = Parameter(tensor(np.ones((2, 2), np.float32)))
    state._metadata = collections.OrderedDict([("", {"version": 1}), ("m", {"version": 2})])
    got = read(tmp_path, state)
    assert list(got) == ["z.weight", "a.bias", "m.running_var", "b.num_batches_tracked", "p"]
    assert got["b.num_batches_tracked"].shape == () and got["b.num_batches_tracked"] == 7
    assert got["b.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(got["p"], np.ones((2, 2)))


def test_conjugate_and_negative_bits(tmp_path):
    values = np.array([1 + 2j, -3 - 4j], np.complex64)
    state = {"c": Tensor(Storage(values), metadata={"conj": True}),
             "n": Tensor(Storage(values), metadata={"neg": True})}
    got = read(tmp_path, state)
    np.testing.assert_array_equal(got["c"], np.conj(values))
    np.testing.assert_array_equal(got["n"], -values)


def test_checkpoint_dict_needs_key(tmp_path):
    weights = {"w": tensor(np.ones(3, np.float32))}
    path = write_torch_file(tmp_path / "ckpt.pth", {"model": weights, "epoch": 3,
                                                    "optimizer": {"state": {}, "lr": 0.1}})
    with pytest.raises(TorchFormatError, match=r"ckpt\.pth: holds a checkpoint dict .*'model'.*"
                                               r"pass key='model'"):
        read_state_dict(path)
    np.testing.assert_array_equal(read_state_dict(str(path), key="model")["w"], np.ones(3))
    with pytest.raises(TorchFormatError, match=r"has no key 'w' \(its keys: 'model', 'epoch'"):
        read_state_dict(path, key="w")
    with pytest.raises(TorchFormatError, match=r"value of 'epoch' is not a tensor but a int"):
        read(tmp_path, {"w": weights["w"], "epoch": 3})


def test_storages_outside_the_chosen_state_dict_are_never_read(tmp_path):
    checkpoint = {"model": {"w": tensor(np.ones(2, np.float32))},
                  "ema": {"w": tensor(np.zeros(2, np.float32))}}
    path = write_torch_file(tmp_path / "ckpt.pth", checkpoint, drop=("data/1",))  # the ema's
    np.testing.assert_array_equal(read_state_dict(path, key="model")["w"], np.ones(2))
    with pytest.raises(TorchFormatError, match="state_dict is under 'model' and 'ema': pass key="):
        read_state_dict(path)


@pytest.mark.parametrize("obj, message", [
    ([1, 2], "holds a list object, not a state_dict"),
    (None, "holds a NoneType object, not a state_dict"),
    ({1: None}, "its key 1 is not a string"),
])
def test_not_a_state_dict(tmp_path, obj, message):
    with pytest.raises(TorchFormatError, match=message):
        read(tmp_path, obj)


def test_a_single_tensor_is_not_a_state_dict(tmp_path):
    with pytest.raises(TorchFormatError, match="holds a single tensor"):
        read(tmp_path, tensor(np.ones(2, np.float32)))


def test_refuses_any_other_global_without_calling_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = Reduce(Global("os", "system"), (f"touch {marker}",))
    with pytest.raises(TorchFormatError, match=r"model\.pth: refuses to load global 'os\.system': "
                                               r"a state_dict holds only tensors"):
        read(tmp_path, {"w": evil})
    # the same as the standard pickler names os.system (module posix on Linux)
    pickled = pickle.dumps({"w": Reduce(os.system, (f"touch {marker}",))}, protocol=2)
    with pytest.raises(TorchFormatError, match=r"refuses to load global '(posix|nt)\.system'"):
        read(tmp_path, None, pickled=pickled)
    pickled = pickle.dumps({"w": Reduce(eval, (f"open({str(marker)!r}, 'w')",))}, protocol=4)
    with pytest.raises(TorchFormatError, match=r"refuses to load global 'builtins\.eval'"):
        read(tmp_path, None, pickled=pickled)
    assert not marker.exists()


def test_refuses_a_whole_pickled_module(tmp_path):
    module = Reduce(Global("torch.nn.modules.container", "Sequential"), ())
    with pytest.raises(TorchFormatError, match=r"'torch\.nn\.modules\.container\.Sequential'.*"
                                               r"save its model\.state_dict\(\) instead"):
        read(tmp_path, module)


def test_allowed_globals_are_exactly_what_a_state_dict_needs():
    assert ALLOWED_GLOBALS[:3] == ("collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                                   "torch._utils._rebuild_parameter")
    assert set(ALLOWED_GLOBALS[3:]) == {f"torch.{name}" for name in STORAGE_TYPES.values()} | {
        "torch.BFloat16Storage"}


def test_not_a_zip(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"hello, not a model")
    with pytest.raises(TorchFormatError, match=r"model\.pth: is not a torch\.save file"):
        read_state_dict(path)


def test_legacy_format_gets_a_hint(tmp_path):
    path = tmp_path / "old.pth"  # how the legacy format starts: the pickled magic number
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001))
    with pytest.raises(TorchFormatError, match=r"old\.pth: was saved with "
                                               r"_use_new_zipfile_serialization=False.*re-save it "
                                               r"with a current PyTorch"):
        read_state_dict(path)


def test_truncated_zip(tmp_path):
    path = write_torch_file(tmp_path / "model.pth", {"w": tensor(np.ones(100, np.float32))})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(TorchFormatError, match="is a truncated or damaged zip archive"):
        read_state_dict(path)


def test_damaged_storage_bytes(tmp_path):
    path = write_torch_file(tmp_path / "model.pth", {"w": tensor(np.ones(100, np.float32))})
    raw = bytearray(path.read_bytes())
    raw[raw.index(np.float32(1).tobytes() * 4) + 8] ^= 0xFF  # the CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(TorchFormatError, match="is a damaged zip archive"):
        read_state_dict(path)


def test_no_data_pkl(tmp_path):
    with pytest.raises(TorchFormatError, match="has no data.pkl"):
        read(tmp_path, {"w": tensor(np.ones(2, np.float32))}, drop=("data.pkl",))


def test_missing_storage_entry(tmp_path):
    with pytest.raises(TorchFormatError, match=r"has no entry 'model/data/0' for storage '0'"):
        read(tmp_path, {"w": tensor(np.ones(2, np.float32))}, drop=("data/0",))


def test_truncated_storage(tmp_path):
    with pytest.raises(TorchFormatError, match=r"truncated or damaged storage 'model/data/0': "
                                               r"4 bytes where its 2 FloatStorage elements need 8"):
        read(tmp_path, {"w": tensor(np.ones(2, np.float32))}, replace={"data/0": b"\0" * 4})


@pytest.mark.parametrize("offset, size, stride", [(0, (7,), (1,)), (5, (2,), (1,)),
                                                  (0, (2, 3), (3, 1)), (7, (0,), (1,))])
def test_view_past_the_end_of_its_storage(tmp_path, offset, size, stride):
    state = {"w": Tensor(Storage(np.ones(6, np.float32)[:5]), offset, size, stride)}
    with pytest.raises(TorchFormatError, match="reaching past the end of its storage '0' of 5"):
        read(tmp_path, state)


def test_storage_numel_disagreeing_with_its_bytes(tmp_path):
    state = {"w": Tensor(Storage(np.ones(4, np.float32), numel=8), 0, (8,), (1,))}
    with pytest.raises(TorchFormatError,
                       match="16 bytes where its 8 FloatStorage elements need 32"):
        read(tmp_path, state)


def test_unknown_byteorder(tmp_path):
    with pytest.raises(TorchFormatError, match="unknown byteorder record b'middle'"):
        read(tmp_path, {"w": tensor(np.ones(2, np.float32))}, replace={"byteorder": b"middle"})


def test_damaged_pickle(tmp_path):
    with pytest.raises(TorchFormatError, match="has a damaged data.pkl"):
        read(tmp_path, None, pickled=TORCH_DATA_PKL[:100])


def test_malformed_persistent_id(tmp_path):
    class Odd(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "FloatStorage", "0", "cpu", 2) if obj == "x" else None
    buffer = io.BytesIO()
    Odd(buffer, protocol=2).dump({"w": "x"})
    with pytest.raises(TorchFormatError, match="unexpected persistent id"):
        read(tmp_path, None, pickled=buffer.getvalue())
