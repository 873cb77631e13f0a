import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import keras
import keras.src.applications.vgg16 as keras_vgg16
import keras.src.utils.file_utils as keras_file_utils
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd.modeling.pretrained import initialize_for_config
from ssd.modeling.pretrained import vgg16 as pretrained
from ssd.config.loading import load_config
from ssd.modeling.build import build_model
from ssd.modeling.pretrained.keras_cache import PretrainedError, keras_cache_file
from ssd.modeling.pretrained.vgg16 import initialize_backbone
from ssd.data.records import make_example

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "http://127.0.0.1:9/vgg16_weights_tf_dim_ordering_tf_kernels.h5"  # discard port

CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
         "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
KERAS_NAMES = {"conv1_1": "block1_conv1", "conv1_2": "block1_conv2", "conv2_1": "block2_conv1",
               "conv2_2": "block2_conv2", "conv3_1": "block3_conv1", "conv3_2": "block3_conv2",
               "conv3_3": "block3_conv3", "conv4_1": "block4_conv1", "conv4_2": "block4_conv2",
               "conv4_3": "block4_conv3", "conv5_1": "block5_conv1", "conv5_2": "block5_conv2",
               "conv5_3": "block5_conv3"}
UNTOUCHED = ["conv8_1", "conv8_2", "conv11_2", "cls_0", "loc_3", "conv4_3_norm"]
KEPT_UNITS = 4 * np.arange(1024)  # 0, 4, ..., 4092


def slim_conv_shapes():
    shapes, cin = {}, 3
    for name, cout in zip(CONVS, [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]):
        shapes[name] = (3, 3, cin, cout)
        cin = cout
    return shapes


@pytest.fixture
def model():
    return build_model(load_config("ssd300_voc0712"))


@pytest.fixture(scope="module")
def vgg():
    return keras.applications.VGG16(weights=None, include_top=True)


@pytest.fixture(scope="module")
def keras_file(vgg, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / "vgg16.weights.h5"
    vgg.save_weights(str(path))
    return path


def weights_of(model, names):
    return {n: [w.numpy().copy() for w in model.get_layer(n).weights] for n in names}


def check_keras_copy(model, vgg):
    for ours, theirs in KERAS_NAMES.items():
        np.testing.assert_array_equal(model.get_layer(ours).kernel.numpy(),
                                      vgg.get_layer(theirs).kernel.numpy())
        np.testing.assert_array_equal(model.get_layer(ours).bias.numpy(),
                                      vgg.get_layer(theirs).bias.numpy())
    fc1 = vgg.get_layer("fc1").kernel.numpy()  # [25088, 4096], rows ordered (h, w, c)
    ky, kx, c = np.meshgrid(np.arange(3), np.arange(3), np.arange(512), indexing="ij")
    rows = ((3 * ky) * 7 + 3 * kx) * 512 + c  # taps 0, 3, 6 of the 7x7 grid
    np.testing.assert_array_equal(model.get_layer("fc6").kernel.numpy(), fc1[rows][..., KEPT_UNITS])
    np.testing.assert_array_equal(model.get_layer("fc6").bias.numpy(),
                                  vgg.get_layer("fc1").bias.numpy()[KEPT_UNITS])
    fc2 = vgg.get_layer("fc2").kernel.numpy()
    np.testing.assert_array_equal(model.get_layer("fc7").kernel.numpy()[0, 0],
                                  fc2[np.ix_(KEPT_UNITS, KEPT_UNITS)])
    np.testing.assert_array_equal(model.get_layer("fc7").bias.numpy(),
                                  vgg.get_layer("fc2").bias.numpy()[KEPT_UNITS])


def check_untouched(model, before):
    for name, values in before.items():
        for got, want in zip(model.get_layer(name).weights, values):
            np.testing.assert_array_equal(got.numpy(), want)


def test_keras_weights_file(model, vgg, keras_file):
    before = weights_of(model, UNTOUCHED)
    report = initialize_backbone(model, str(keras_file))
    check_keras_copy(model, vgg)
    check_untouched(model, before)
    np.testing.assert_array_equal(model.get_layer("conv4_3_norm").weights[0].numpy(), 20.0)
    assert report["format"] == "keras"
    assert report["copied"] == CONVS and report["subsampled"] == ["fc6", "fc7"]
    assert report["input_channels_flipped"] == []  # Keras' VGG16 weights already read BGR
    assert set(UNTOUCHED) <= set(report["left_initialized"])


def test_legacy_keras_h5_file(model, vgg, tmp_path):
    path = tmp_path / "vgg16_full_model.h5"  # the legacy HDF5 format of Keras' ImageNet file
    vgg.save(str(path))
    initialize_backbone(model, str(path))
    check_keras_copy(model, vgg)


@pytest.fixture(scope="module")
def imagenet_stand_in(vgg, tmp_path_factory):
    """A file in the format of Keras' ImageNet download (legacy HDF5), with `vgg`'s weights."""
    path = tmp_path_factory.mktemp("imagenet") / "vgg16_legacy.h5"
    vgg.save(str(path))
    return path


def test_cache_location_and_file_are_the_ones_keras_uses(keras_home):
    assert keras_cache_file(pretrained.KERAS_VGG16_FILE) == keras_home / "models" / pretrained.KERAS_VGG16_FILE
    assert pretrained.KERAS_VGG16_URL == keras_vgg16.WEIGHTS_PATH
    source = Path(keras_vgg16.__file__).read_text()
    assert f'"{pretrained.KERAS_VGG16_FILE}"' in source
    assert f'file_hash="{pretrained.KERAS_VGG16_MD5}"' in source


def test_imagenet_goes_through_keras_applications(model, vgg, monkeypatch, keras_home):
    calls = []

    def fake_vgg16(**kwargs):
        calls.append(kwargs)
        return vgg

    monkeypatch.setattr(keras.applications, "VGG16", fake_vgg16)
    report = initialize_backbone(model, "imagenet")
    assert calls == [{"weights": "imagenet", "include_top": True}]
    check_keras_copy(model, vgg)
    assert report["source"] == "imagenet" and report["subsampled"] == ["fc6", "fc7"]


def write_checkpoint(prefix, arrays):
    names = sorted(arrays)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(arrays[n]) for n in names])
    return str(prefix)


def slim_arrays(full_fc, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in slim_conv_shapes().items():
        block = name[4]
        arrays[f"vgg_16/conv{block}/{name}/weights"] = rng.standard_normal(shape, np.float32)
        arrays[f"vgg_16/conv{block}/{name}/biases"] = rng.standard_normal(shape[-1:], np.float32)
    fc6, fc7, units = ((7, 7, 512, 4096), (1, 1, 4096, 4096), 4096) if full_fc else (
        (3, 3, 512, 1024), (1, 1, 1024, 1024), 1024)
    arrays["vgg_16/fc6/weights"] = rng.standard_normal(fc6, np.float32)
    arrays["vgg_16/fc6/biases"] = rng.standard_normal(units, np.float32)
    arrays["vgg_16/fc7/weights"] = rng.standard_normal(fc7, np.float32)
    arrays["vgg_16/fc7/biases"] = rng.standard_normal(units, np.float32)
    arrays["vgg_16/fc8/weights"] = rng.standard_normal((1, 1, units, 10), np.float32)
    arrays["global_step"] = np.int64(1000)
    return arrays


@pytest.fixture(scope="module")
def slim_full(tmp_path_factory):
    arrays = slim_arrays(full_fc=True)
    return write_checkpoint(tmp_path_factory.mktemp("slim") / "vgg_16.ckpt", arrays), arrays


def check_slim_convs(model, arrays):
    for name in CONVS:
        block = name[4]
        kernel = arrays[f"vgg_16/conv{block}/{name}/weights"]
        if name == "conv1_1":  # RGB-trained kernel must read our BGR input
            kernel = kernel[:, :, [2, 1, 0], :]
        np.testing.assert_array_equal(model.get_layer(name).kernel.numpy(), kernel)
        np.testing.assert_array_equal(model.get_layer(name).bias.numpy(),
                                      arrays[f"vgg_16/conv{block}/{name}/biases"])


def test_slim_full_fc_checkpoint(model, slim_full):
    prefix, arrays = slim_full
    before = weights_of(model, UNTOUCHED)
    report = initialize_backbone(model, prefix)
    check_slim_convs(model, arrays)
    fc6 = arrays["vgg_16/fc6/weights"]
    taps = np.array([0, 3, 6])
    np.testing.assert_array_equal(model.get_layer("fc6").kernel.numpy(),
                                  fc6[taps][:, taps][:, :, :, KEPT_UNITS])
    np.testing.assert_array_equal(model.get_layer("fc6").bias.numpy(),
                                  arrays["vgg_16/fc6/biases"][KEPT_UNITS])
    fc7 = arrays["vgg_16/fc7/weights"][0, 0]
    np.testing.assert_array_equal(model.get_layer("fc7").kernel.numpy()[0, 0],
                                  fc7[np.ix_(KEPT_UNITS, KEPT_UNITS)])
    np.testing.assert_array_equal(model.get_layer("fc7").bias.numpy(),
                                  arrays["vgg_16/fc7/biases"][KEPT_UNITS])
    check_untouched(model, before)
    assert report["format"] == "tf-slim" and report["subsampled"] == ["fc6", "fc7"]
    assert report["input_channels_flipped"] == ["conv1_1"]
    # also accepted: the .index file's path
    initialize_backbone(model, prefix + ".index")


def test_slim_conv1_1_reads_bgr(model, slim_full):
    prefix, arrays = slim_full
    initialize_backbone(model, prefix)
    rgb = np.random.default_rng(7).normal(0, 50, (1, 300, 300, 3)).astype(np.float32)
    probe = keras.Model(model.input, model.get_layer("conv1_1").output)
    ours = np.asarray(probe(rgb[..., ::-1].copy()))
    slim = tf.nn.relu(tf.nn.conv2d(rgb, arrays["vgg_16/conv1/conv1_1/weights"], 1, "SAME")
                      + arrays["vgg_16/conv1/conv1_1/biases"]).numpy()
    np.testing.assert_allclose(ours, slim, rtol=1e-4, atol=1e-3)


def test_slim_reduced_fc_checkpoint_is_copied(model, tmp_path):
    arrays = slim_arrays(full_fc=False, seed=1)
    report = initialize_backbone(model, write_checkpoint(tmp_path / "reduced", arrays))
    check_slim_convs(model, arrays)
    for fc in ("fc6", "fc7"):
        np.testing.assert_array_equal(model.get_layer(fc).kernel.numpy(),
                                      arrays[f"vgg_16/{fc}/weights"])
        np.testing.assert_array_equal(model.get_layer(fc).bias.numpy(),
                                      arrays[f"vgg_16/{fc}/biases"])
    assert report["copied"] == CONVS + ["fc6", "fc7"] and report["subsampled"] == []


def test_tf2_object_checkpoint_with_slim_names(model, tmp_path):
    arrays = slim_arrays(full_fc=False, seed=2)
    root = {}
    for name, value in arrays.items():
        if name.startswith("vgg_16/"):
            node = root
            *scopes, leaf = name.split("/")
            for scope in scopes:
                node = node.setdefault(scope, {})
            node[leaf] = tf.Variable(value)
    prefix = tf.train.Checkpoint(**root).write(str(tmp_path / "tf2"))
    initialize_backbone(model, prefix)
    check_slim_convs(model, arrays)


def test_missing_variable_lists_what_was_found(model, tmp_path):
    arrays = slim_arrays(full_fc=False, seed=3)
    del arrays["vgg_16/conv3/conv3_2/biases"]
    prefix = write_checkpoint(tmp_path / "missing", arrays)
    with pytest.raises(PretrainedError, match="lacks vgg_16/conv3/conv3_2/biases") as info:
        initialize_backbone(model, prefix)
    assert "vgg_16/conv3/conv3_2/weights" in str(info.value) and prefix in str(info.value)


def test_checkpoint_without_vgg(model, tmp_path):
    prefix = write_checkpoint(tmp_path / "other",
                              {"resnet/conv1/weights": np.zeros((3, 3), np.float32)})
    with pytest.raises(PretrainedError, match="resnet/conv1/weights"):
        initialize_backbone(model, prefix)


def test_a_foreign_checkpoint_is_named_in_a_few_of_its_variables(model, tmp_path):
    arrays = {f"resnet/block{i}/weights": np.zeros((2,), np.float32) for i in range(50)}
    with pytest.raises(PretrainedError) as info:
        initialize_backbone(model, write_checkpoint(tmp_path / "resnet", arrays))
    message = str(info.value)
    assert "resnet/block0/weights" in message and "more" in message
    assert message.count("resnet/") < 10


@pytest.mark.parametrize("as_prefix", [False, True])
def test_a_detection_model_directory_is_pointed_to_fine_tuning(model, tmp_path, as_prefix):
    model_dir = tmp_path / "runs" / "pets"
    model_dir.mkdir(parents=True)
    prefix = write_checkpoint(model_dir / "ckpt-10", {"model/_operations/1/_kernel": np.zeros(2, np.float32)})
    (model_dir / "config.json").write_text("{}")
    source = prefix if as_prefix else str(model_dir)
    with pytest.raises(PretrainedError) as info:
        initialize_for_config(model, load_config("ssd300_voc0712"), source)
    message = str(info.value)
    assert f"--fine_tune_checkpoint={source}" in message
    assert "_operations" not in message and "\n" not in message and len(message.replace(source, "").replace(str(model_dir), "")) < 250


def test_wrong_shape_names_layer_and_assigns_nothing(model, tmp_path):
    arrays = slim_arrays(full_fc=False, seed=4)
    arrays["vgg_16/conv4/conv4_1/weights"] = np.zeros((3, 3, 256, 256), np.float32)
    before = weights_of(model, ["conv1_1", "fc7"])
    with pytest.raises(PretrainedError, match=r"conv4_1 kernel has shape \(3, 3, 256, 256\)"):
        initialize_backbone(model, write_checkpoint(tmp_path / "shape", arrays))
    check_untouched(model, before)


def test_bad_fc_shapes(model, tmp_path):
    arrays = slim_arrays(full_fc=False, seed=5)
    arrays["vgg_16/fc6/weights"] = np.zeros((3, 3, 512, 1000), np.float32)
    with pytest.raises(PretrainedError, match="fc6 kernel has shape"):
        initialize_backbone(model, write_checkpoint(tmp_path / "fc6", arrays))
    arrays = slim_arrays(full_fc=False, seed=5)
    arrays["vgg_16/fc7/weights"] = np.zeros((1, 1, 4096, 4096), np.float32)
    arrays["vgg_16/fc7/biases"] = np.zeros(4096, np.float32)
    with pytest.raises(PretrainedError, match="fc6 is reduced but fc7 is full"):
        initialize_backbone(model, write_checkpoint(tmp_path / "mixed", arrays))


def test_width_multiplier_is_refused(tmp_path):
    narrow = build_model(load_config("ssd300_voc0712", {"model.width_multiplier": 0.125}))
    prefix = write_checkpoint(tmp_path / "narrow", slim_arrays(full_fc=False, seed=6))
    with pytest.raises(PretrainedError, match="width_multiplier"):
        initialize_backbone(narrow, prefix)


@pytest.mark.slow
def test_bad_keras_file(model, tmp_path):
    garbage = tmp_path / "broken.weights.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(PretrainedError, match="broken.weights.h5"):
        initialize_backbone(model, str(garbage))
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other_path = tmp_path / "other.weights.h5"
    other.save_weights(str(other_path))
    with pytest.raises(PretrainedError, match="other.weights.h5"):
        initialize_backbone(model, str(other_path))
    with pytest.raises(PretrainedError, match="not found"):
        initialize_backbone(model, str(tmp_path / "absent.h5"))


def test_unknown_source(model, tmp_path):
    with pytest.raises(PretrainedError, match="no such Keras weights file"):
        initialize_backbone(model, str(tmp_path / "nothing_here"))


def test_none_leaves_model_alone(model):
    before = weights_of(model, ["conv1_1", "fc6", "cls_0"])
    report = initialize_backbone(model, "none")
    check_untouched(model, before)
    assert report["copied"] == [] and report["subsampled"] == []


def test_imagenet_offline_names_url_cache_and_alternatives(model, monkeypatch, keras_home):
    monkeypatch.setattr(keras_vgg16, "WEIGHTS_PATH", UNREACHABLE)
    before = weights_of(model, ["conv1_1", "fc6"])
    with pytest.raises(PretrainedError) as raised:
        initialize_backbone(model, "imagenet")
    message = str(raised.value)
    cached = keras_home / "models" / pretrained.KERAS_VGG16_FILE
    assert str(cached) in message
    assert pretrained.KERAS_VGG16_URL in message and "127.0.0.1:9" in message  # URL and reason
    assert "--pretrained=PATH" in message and "TF-slim vgg_16" in message
    assert "--pretrained=none" in message
    assert not cached.exists()  # no partial download left to be mistaken for the file
    check_untouched(model, before)


@pytest.mark.slow
def test_imagenet_reads_the_cached_file_without_network(model, vgg, imagenet_stand_in, monkeypatch,
                                                        keras_home, caplog):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(keras_vgg16, "WEIGHTS_PATH", UNREACHABLE)
    monkeypatch.setattr(keras_file_utils, "get_file", no_network)
    monkeypatch.setattr(keras_file_utils, "urlretrieve", no_network)
    (keras_home / "models").mkdir()
    (keras_home / "models" / pretrained.KERAS_VGG16_FILE).symlink_to(imagenet_stand_in)
    with caplog.at_level(logging.WARNING):
        report = initialize_backbone(model, "imagenet")
    check_keras_copy(model, vgg)
    assert report["source"] == "imagenet" and report["subsampled"] == ["fc6", "fc7"]
    assert "md5 differs" in caplog.text  # the stand-in is not Keras' published file


def test_broken_cached_file_names_it_and_the_remedy(model, keras_home):
    cached = keras_home / "models" / pretrained.KERAS_VGG16_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"truncated download")
    with pytest.raises(PretrainedError, match="delete it") as raised:
        initialize_backbone(model, "imagenet")
    assert str(cached) in str(raised.value)


def write_one_record(directory: Path) -> None:
    directory.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (90, 30, 30)).save(buffer, format="JPEG")
    example = make_example(encoded=buffer.getvalue(), image_format="jpeg", height=40, width=48,
                           filename="a.jpg", source_id="a", boxes=[[0.2, 0.2, 0.7, 0.8]],
                           labels=[1], texts=["thing"], difficult=[0], truncated=[0])
    with tf.io.TFRecordWriter(str(directory / "train-00000-of-00001")) as writer:
        writer.write(example.SerializeToString())


@pytest.mark.slow
def test_train_app_offline_prints_the_remedy_then_runs_from_the_cache(imagenet_stand_in, tmp_path):
    write_one_record(tmp_path / "records")
    home = tmp_path / "keras_home"
    home.mkdir()
    env = dict(os.environ, KERAS_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="2",
               # every download goes through a proxy that refuses connections
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               no_proxy="", NO_PROXY="")
    command = [sys.executable, str(ROOT / "train.py"), f"--model_dir={tmp_path / 'model'}",
               f"--data_dir={tmp_path / 'records'}", "--pretrained=imagenet",
               "--set", "model.width_multiplier=0.125", "--set", "model.num_classes=2",
               "--set", f"data.class_names={json.dumps(['thing'])}",
               "--set", "train.batch_size=1", "--set", "train.max_steps=1"]

    offline = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    cached = home / "models" / pretrained.KERAS_VGG16_FILE
    assert offline.returncode != 0
    assert "Traceback" not in offline.stderr
    assert "train.py: error: pretrained source 'imagenet': could not download" in offline.stderr
    assert str(cached) in offline.stderr
    assert "--pretrained=PATH" in offline.stderr and "--pretrained=none" in offline.stderr

    # Once the file is in the cache the same command gets past the download: it now stops at
    # the next check, the narrow test network that cannot take full-width VGG16 weights.
    cached.parent.mkdir(exist_ok=True)
    cached.symlink_to(imagenet_stand_in)
    cached_run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=600)
    assert cached_run.returncode != 0 and "Traceback" not in cached_run.stderr
    assert "could not download" not in cached_run.stderr
    assert "train.py: error: pretrained VGG16 weights need the full-width network" in \
        cached_run.stderr
