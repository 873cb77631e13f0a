"""Tests of ssd.weights.caffe_format, the protobuf-free .caffemodel reader.

The files are built here with a tiny protobuf wire *writer* of the test's
own (not the reader's code), following caffe.proto's field numbers.
"""

import random
import struct
import zipfile

import numpy as np
import pytest

from ssd.weights.caffe_format import (
    CaffeFormatError,
    CaffeLayer,
    CaffeNet,
    read_caffemodel,
)

# --- protobuf wire writer ---------------------------------------------------


def varint(n):
    n &= (1 << 64) - 1  # negative ints are written as 10-byte two's complement
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(field, wire):
    return varint(field << 3 | wire)


def vint(field, n):
    return tag(field, 0) + varint(n)


def ld(field, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return tag(field, 2) + varint(len(payload)) + payload


def fixed32(field, x):
    return tag(field, 5) + struct.pack("<f", x)


def fixed64(field, x):
    return tag(field, 1) + struct.pack("<d", x)


def packed_floats(field, values):
    return ld(field, np.asarray(values, "<f4").tobytes())


def unpacked_floats(field, values):
    return b"".join(fixed32(field, float(v)) for v in np.ravel(values))


def packed_varints(field, values):
    return ld(field, b"".join(varint(v) for v in values))


# Unknown fields of every wire type (numbers unused in the message at hand).
UNKNOWN = (
    vint(901, 7)
    + vint(902, -3)
    + fixed64(903, 1.25)
    + ld(904, b"\x00\xff junk \x08\x96\x01")
    + fixed32(905, -2.5)
)

# --- blob / layer / net builders (caffe.proto numbers) ----------------------


def blob(values, shape=None, legacy=None, data=None):
    """BlobProto: shape (7, dims packed), or legacy num/channels/height/width (1-4)."""
    out = UNKNOWN
    if shape is not None:
        out += ld(7, packed_varints(1, shape) + UNKNOWN)
    if legacy is not None:
        out += b"".join(vint(f, d) for f, d in zip((1, 2, 3, 4), legacy))
    out += data if data is not None else packed_floats(5, values)
    return out


def layer(name, type_, blobs=(), extra=b""):
    """LayerParameter: name 1, type 2, blobs 7, plus fields Caffe writes."""
    out = ld(1, name) + ld(2, type_) + ld(3, "bottom") + ld(4, name)
    out += vint(10, 1) + extra + UNKNOWN  # phase, then whatever else
    out += b"".join(ld(7, b) for b in blobs)
    # convolution_param (106): a known Caffe field this reader skips unread.
    return out + ld(106, vint(1, 64) + vint(4, 3))


def v1_layer(name, type_enum, blobs=()):
    """V1LayerParameter: name 4, type 5 (enum), blobs 6; 7 is blobs_lr here."""
    out = ld(2, "bottom") + ld(3, name) + ld(4, name)
    if type_enum is not None:
        out += vint(5, type_enum)
    out += b"".join(ld(6, b) for b in blobs)
    # blobs_lr (7, floats) and a V0 `layer` (1) must not be taken as blobs/names.
    return out + fixed32(7, 1.0) + fixed32(7, 2.0) + ld(1, ld(1, "v0") + ld(50, b"")) + UNKNOWN


def net(*layer_fields, name="VGG_SSD"):
    """NetParameter: name 1, `layer` 100, `layers` 2; input 3, force_backward 5."""
    return ld(1, name) + ld(3, "data") + vint(5, 0) + UNKNOWN + b"".join(layer_fields)


RNG = np.random.default_rng(0)
CONV_W = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
CONV_B = np.array([0.5, -1.5], np.float32)
NORM = np.array([20.0, 20.0, 20.0], np.float32)
FC_W = RNG.standard_normal((4, 6)).astype(np.float32)
FC_B = np.array([1, 2, 3, 4], np.float32)


def current_layout():
    return net(
        ld(100, layer("data", "Input")),
        ld(100, layer("conv1_1", "Convolution",
                      [blob(CONV_W, shape=CONV_W.shape), blob(CONV_B, shape=(2,))])),
        ld(100, layer("relu1_1", "ReLU")),
        ld(100, layer("conv4_3_norm", "Normalize", [blob(NORM, shape=(3,))])),
    )


def legacy_layout():
    return net(
        ld(2, v1_layer("data", None)),
        ld(2, v1_layer("conv1_1", 4, [
            blob(None, legacy=CONV_W.shape, data=unpacked_floats(5, CONV_W)),
            blob(None, legacy=(1, 1, 1, 2), data=unpacked_floats(5, CONV_B)),
        ])),
        ld(2, v1_layer("relu1_1", 18)),
        ld(2, v1_layer("fc6", 14, [
            blob(None, legacy=(1, 1, 4, 6), data=unpacked_floats(5, FC_W)),
            blob(None, legacy=(1, 1, 1, 4), data=unpacked_floats(5, FC_B)),
        ])),
        ld(2, v1_layer("custom", 99)),
    )


def assert_layer(got, name, type_, arrays):
    assert isinstance(got, CaffeLayer)
    assert (got.name, got.type) == (name, type_)
    assert len(got.blobs) == len(arrays)
    for b, expected in zip(got.blobs, arrays):
        assert b.dtype == np.float32 and b.shape == expected.shape
        np.testing.assert_array_equal(b, expected)


# --- reading ------------------------------------------------------------------


def test_current_layout(tmp_path):
    path = tmp_path / "net.caffemodel"
    path.write_bytes(current_layout())
    got = read_caffemodel(path)
    assert isinstance(got, CaffeNet) and got.name == "VGG_SSD"
    assert [layer.name for layer in got.layers] == ["data", "conv1_1", "relu1_1", "conv4_3_norm"]
    assert_layer(got.layers[0], "data", "Input", [])
    assert_layer(got.layers[1], "conv1_1", "Convolution", [CONV_W, CONV_B])
    assert_layer(got.layers[2], "relu1_1", "ReLU", [])
    assert_layer(got.layers[3], "conv4_3_norm", "Normalize", [NORM])


def test_legacy_layout_with_enum_types_legacy_dims_and_unpacked_floats():
    got = read_caffemodel(legacy_layout())
    assert got.name == "VGG_SSD"
    assert_layer(got.layers[0], "data", "", [])  # no type: V1's NONE, upgraded to ""
    assert_layer(got.layers[1], "conv1_1", "Convolution",
                 [CONV_W, CONV_B.reshape(1, 1, 1, 2)])  # 4-D as stored
    assert_layer(got.layers[2], "relu1_1", "ReLU", [])
    assert_layer(got.layers[3], "fc6", "InnerProduct",
                 [FC_W.reshape(1, 1, 4, 6), FC_B.reshape(1, 1, 1, 4)])
    assert_layer(got.layers[4], "custom", "V1:99", [])


def test_both_layer_fields_kept_in_file_order():
    content = net(
        ld(2, v1_layer("a", 4, [blob(CONV_B, legacy=(1, 1, 1, 2))])),
        ld(100, layer("b", "Scale", [blob(NORM, shape=(3,))])),
        ld(2, v1_layer("c", 17)),
        ld(100, layer("d", "Flatten")),
    )
    got = read_caffemodel(content)
    assert [(x.name, x.type) for x in got.layers] == [
        ("a", "Convolution"), ("b", "Scale"), ("c", "Pooling"), ("d", "Flatten")]
    np.testing.assert_array_equal(got.layers[0].blobs[0], CONV_B.reshape(1, 1, 1, 2))


def test_double_data_packed_and_unpacked_replaces_data():
    values = np.array([0.1, 1e-3, -7.25, 3.0], np.float64)
    packed = ld(8, values.astype("<f8").tobytes())
    unpacked = b"".join(fixed64(8, v) for v in values)
    for data in (packed, unpacked, packed_floats(5, [9, 9, 9, 9]) + packed):
        got = read_caffemodel(net(ld(100, layer("s", "Scale", [blob(None, shape=(2, 2), data=data)]))))
        np.testing.assert_array_equal(got.layers[0].blobs[0], values.astype(np.float32).reshape(2, 2))


def test_split_and_mixed_float_chunks_concatenate_in_order():
    values = np.arange(10, dtype=np.float32)
    data = (packed_floats(5, values[:3]) + unpacked_floats(5, values[3:5])
            + packed_floats(5, []) + packed_floats(5, values[5:9]) + fixed32(5, 9.0))
    got = read_caffemodel(net(ld(100, layer("x", "InnerProduct", [blob(None, shape=(2, 5), data=data)]))))
    np.testing.assert_array_equal(got.layers[0].blobs[0], values.reshape(2, 5))


def test_shape_dims_unpacked_split_and_scalar_or_empty_blobs():
    dims = vint(1, 2) + packed_varints(1, [3]) + vint(1, 4)
    values = np.arange(24, dtype=np.float32)
    got = read_caffemodel(net(ld(100, layer("x", "X", [
        ld(7, dims) + packed_floats(5, values),
        ld(7, vint(1, 2)) + ld(7, vint(1, 3)) + packed_floats(5, values[:6]),  # merged
        packed_floats(5, [4.5]),  # no shape at all: a scalar, as in Caffe
        ld(7, packed_varints(1, [0, 5])),  # an empty blob
    ]))))
    a, b, c, d = got.layers[0].blobs
    np.testing.assert_array_equal(a, values.reshape(2, 3, 4))
    np.testing.assert_array_equal(b, values[:6].reshape(2, 3))
    assert c.shape == () and c == np.float32(4.5)
    assert d.shape == (0, 5) and d.dtype == np.float32


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 48, 49, 50, 300])
def test_unpacked_runs_of_any_length_stop_where_another_field_starts(n):
    values = RNG.standard_normal(2 * n).astype(np.float32)
    doubles = RNG.standard_normal(n)
    # Unknown fixed32 (2-byte key) and fixed64 fields split the runs; the blob
    # ends with a run that reaches the end of its message exactly.
    data = (unpacked_floats(5, values[:n]) + fixed32(905, 1.0) * 3 + fixed64(903, 2.0)
            + unpacked_floats(5, values[n:]))
    double_data = b"".join(fixed64(8, v) for v in doubles) + fixed32(905, 1.0)
    got = read_caffemodel(net(ld(100, layer("x", "X", [
        blob(None, shape=(2, n), data=data),
        blob(None, legacy=(1, 1, 1, n), data=double_data + packed_floats(5, values[:n])),
    ]))))
    a, b = got.layers[0].blobs
    np.testing.assert_array_equal(a, values.reshape(2, n))
    np.testing.assert_array_equal(b, doubles.astype(np.float32).reshape(1, 1, 1, n))


def test_special_values_are_kept_bit_exact():
    values = np.array([np.inf, -np.inf, -0.0, 1e-45, 3.4028235e38], np.float32)
    values = np.concatenate([values, np.array([0x7FC00001, 0xFF800123], "<u4").view("<f4")])
    for data in (packed_floats(5, values), b"".join(tag(5, 5) + v.tobytes() for v in values)):
        got = read_caffemodel(net(ld(100, layer("x", "X", [blob(None, shape=(7,), data=data)]))))
        assert got.layers[0].blobs[0].tobytes() == values.astype("<f4").tobytes()


def test_inputs_path_str_bytes_bytearray_memoryview_and_arrays_are_copies(tmp_path):
    content = current_layout()
    path = tmp_path / "m.caffemodel"
    path.write_bytes(content)
    buffer = bytearray(content)
    for source in (path, str(path), content, buffer, memoryview(buffer)):
        got = read_caffemodel(source)
        np.testing.assert_array_equal(got.layers[1].blobs[0], CONV_W)
    conv_w = got.layers[1].blobs[0]
    assert conv_w.flags.writeable and conv_w.flags.owndata and conv_w.flags.c_contiguous
    buffer[:] = bytes(len(buffer))  # the arrays do not alias the input
    np.testing.assert_array_equal(conv_w, CONV_W)


def test_net_without_name_and_layer_without_name():
    got = read_caffemodel(ld(100, ld(2, "ReLU")))
    assert got == CaffeNet("", [CaffeLayer("", "ReLU", [])])


# --- errors -----------------------------------------------------------------

CONV4_3 = layer("conv4_3", "Convolution", [blob(None, shape=(512, 512, 3, 3), data=packed_floats(5, np.zeros(1000)))])
GOOD = current_layout()
BAD_CASES = {
    "empty": (b"", "empty"),
    "truncated_varint": (GOOD + b"\x80", "truncated varint"),
    "truncated_key": (b"\xa2", "truncated varint"),
    "length_past_end": (GOOD[:-5], "only"),
    "length_past_end_in_blob": (net(ld(100, ld(1, "x") + ld(7, ld(5, b"\x00" * 8)[:-4]))), "layer 'x'"),
    "truncated_fixed32": (GOOD + tag(77, 5) + b"\x00\x00", "needs 4 bytes, only 2 left"),
    "truncated_fixed64": (GOOD + tag(77, 1) + b"\x00", "needs 8 bytes, only 1 left"),
    "truncated_unpacked_run": (ld(100, ld(1, "c") + ld(7, unpacked_floats(5, [1, 2, 3]) + tag(5, 5) + b"\x00\x00")),
                               "layer 'c': blob 0: field 5 at byte 23 needs 4 bytes, only 2 left"),
    "varint_too_long": (GOOD + vint(77, 0)[:-1] + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    "group_start": (GOOD + tag(77, 3), "wire type 3"),
    "group_end": (GOOD + tag(77, 4), "wire type 4"),
    "wire_type_6": (GOOD + tag(77, 6), "wire type 6"),
    "field_zero": (GOOD + b"\x00\x00", "field number 0"),
    "layer_as_varint": (vint(100, 3), "a layer has wire type varint"),
    "layer_name_as_varint": (ld(100, vint(1, 3)), "the layer name has wire type varint"),
    "v1_type_as_string": (ld(2, ld(4, "c") + ld(5, "CONVOLUTION")), "the V1 layer type"),
    "blob_as_fixed32": (ld(100, ld(1, "c") + fixed32(7, 1.0)), "a blob has wire type fixed32"),
    "data_as_varint": (ld(100, ld(1, "c") + ld(7, vint(5, 1))), "data has wire type varint"),
    "double_data_as_fixed32": (ld(100, ld(1, "c") + ld(7, fixed32(8, 1.0))), "double_data has wire type"),
    "dim_as_fixed64": (ld(100, ld(1, "c") + ld(7, ld(7, fixed64(1, 1.0)))), "shape.dim has wire type"),
    "legacy_dim_as_string": (ld(100, ld(1, "c") + ld(7, ld(1, "1"))), "a legacy dimension"),
    "packed_floats_odd_length": (ld(100, ld(1, "c") + ld(7, ld(5, b"\x00" * 6))), "not a multiple of 4"),
    "count_mismatch": (net(ld(100, CONV4_3)),
                       "layer 'conv4_3': blob 0 holds 1000 values, its shape (512, 512, 3, 3) needs 2359296"),
    "legacy_count_mismatch": (ld(2, ld(4, "fc7") + ld(6, blob(None, legacy=(1, 1, 1, 4), data=packed_floats(5, [1, 2])))),
                              "layer 'fc7': blob 0 holds 2 values, its shape (1, 1, 1, 4) needs 4"),
    "scalar_without_data": (ld(100, ld(1, "c") + ld(7, b"")), "blob 0 holds 0 values, its shape () needs 1"),
    "negative_dim": (ld(100, ld(1, "c") + ld(7, ld(7, vint(1, -2)))), "negative dimension in shape (-2,)"),
    "no_layers": (ld(1, "just a name") + UNKNOWN, "no layers"),
    "text": (b'name: "VGG_ILSVRC_16_layers"\nlayer {\n  name: "conv1_1"\n}\n', "looks like text"),
    "hdf5": (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_errors_name_the_file_and_the_problem(tmp_path, case):
    content, fragment = BAD_CASES[case]
    path = tmp_path / f"{case}.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffeFormatError) as info:
        read_caffemodel(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message, message


def test_zip_file_and_bytes_label(tmp_path):
    path = tmp_path / "weights.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("net.caffemodel", GOOD)
    with pytest.raises(CaffeFormatError, match="weights.zip: this is a zip archive"):
        read_caffemodel(path)
    with pytest.raises(CaffeFormatError, match="^<caffemodel bytes>: "):
        read_caffemodel(GOOD[:-1])


def test_errors_inside_a_layer_say_which_layer():
    nameless = net(ld(100, layer("ok", "ReLU")), ld(100, ld(2, "Convolution") + ld(7, ld(5, b"\x00" * 3))))
    with pytest.raises(CaffeFormatError, match=r"layer #1: blob 0: packed data of 3 bytes"):
        read_caffemodel(nameless)
    early = ld(100, ld(1, "conv9") + b"\x80")  # a wire error before the layer is read whole
    with pytest.raises(CaffeFormatError, match="layer #0: truncated varint"):
        read_caffemodel(early)


def test_every_truncation_and_corruption_fails_cleanly():
    """Whatever the damage, the only exception is CaffeFormatError."""
    content = current_layout() + legacy_layout()
    for end in range(len(content)):
        try:
            read_caffemodel(content[:end])
        except CaffeFormatError:
            pass
    rng = random.Random(1)
    for _ in range(2000):
        damaged = bytearray(content)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            read_caffemodel(bytes(damaged))
        except CaffeFormatError:
            pass


def test_deeply_nested_unknown_fields_are_skipped_without_recursion():
    payload = b""
    for _ in range(2000):
        payload = ld(1, payload)
    got = read_caffemodel(net(ld(100, ld(1, "x") + ld(999, payload) + ld(7, packed_floats(5, [1.0])))))
    assert got.layers[0].blobs[0] == np.float32(1.0)


# --- optional cross-check against the protobuf library ----------------------


def caffe_messages():
    """BlobShape/BlobProto/LayerParameter/V1LayerParameter/NetParameter subsets
    built from descriptors at run time (field numbers from caffe.proto)."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="caffe_subset_test.proto", package="caffe_t", syntax="proto2")

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = ".caffe_t." + type_name
            if packed:
                f.options.packed = True

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, None, True))
    message("BlobProto", ("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False),
            ("data", 5, F.TYPE_FLOAT, rep, None, True), ("double_data", 8, F.TYPE_DOUBLE, rep, None, True),
            ("num", 1, F.TYPE_INT32, opt, None, False), ("channels", 2, F.TYPE_INT32, opt, None, False),
            ("height", 3, F.TYPE_INT32, opt, None, False), ("width", 4, F.TYPE_INT32, opt, None, False))
    message("LayerParameter", ("name", 1, F.TYPE_STRING, opt, None, False),
            ("type", 2, F.TYPE_STRING, opt, None, False), ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False))
    message("V1LayerParameter", ("name", 4, F.TYPE_STRING, opt, None, False),
            ("type", 5, F.TYPE_INT32, opt, None, False), ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False))
    message("NetParameter", ("name", 1, F.TYPE_STRING, opt, None, False),
            ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False),
            ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe_t.NetParameter"))


def test_cross_check_with_the_protobuf_library():
    NetParameter = caffe_messages()
    built = NetParameter(name="ssd")
    conv = built.layer.add(name="conv1_1", type="Convolution")
    conv.blobs.add(data=CONV_W.ravel().tolist()).shape.dim.extend(CONV_W.shape)
    conv.blobs.add(data=CONV_B.tolist()).shape.dim.extend([2])
    fc = built.layers.add(name="fc6", type=14)
    fc.blobs.add(num=1, channels=1, height=4, width=6, double_data=FC_W.ravel().tolist())
    got = read_caffemodel(built.SerializeToString())
    assert got.name == "ssd"
    # protobuf writes fields by number: `layers` (2) comes before `layer` (100).
    assert_layer(got.layers[0], "fc6", "InnerProduct", [FC_W.reshape(1, 1, 4, 6)])
    assert_layer(got.layers[1], "conv1_1", "Convolution", [CONV_W, CONV_B])
    # And the test's own writer agrees with protobuf on what it wrote.
    parsed = NetParameter.FromString(legacy_layout() + current_layout())
    assert [x.name for x in parsed.layers] == ["data", "conv1_1", "relu1_1", "fc6", "custom"]
    assert [x.type for x in parsed.layers] == [0, 4, 18, 14, 99]
    assert list(parsed.layer[1].blobs[0].shape.dim) == list(CONV_W.shape)
    np.testing.assert_array_equal(np.array(parsed.layer[1].blobs[0].data, np.float32).reshape(CONV_W.shape), CONV_W)
    np.testing.assert_array_equal(np.array(parsed.layers[3].blobs[1].data, np.float32), FC_B)
