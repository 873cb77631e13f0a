import math

import numpy as np
import pytest

from ssd.modeling import anchors as anchor_module
from ssd.modeling.anchors import caffe_pixel_size, generate_anchors, num_anchors_per_layer
from ssd.config.loading import ConfigError, load_config


def _config(architecture="ssd300", preset="tf1", **overrides):
    values = {"model.architecture": architecture,
              "model.input_size": 300 if architecture == "ssd300" else 512,
              "anchors.preset": preset}
    values.update(overrides)
    return load_config("ssd300_voc0712", values)


def _box(cy, cx, h, w):
    return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


def _flat_index(maps, per_location, layer, y, x, k):
    before = sum(f * f * n for f, n in zip(maps[:layer], per_location[:layer]))
    return before + (y * maps[layer] + x) * per_location[layer] + k


SSD300_MAPS, SSD300_K = [38, 19, 10, 5, 3, 1], [4, 6, 6, 6, 4, 4]
SSD512_MAPS, SSD512_K = [64, 32, 16, 8, 4, 2, 1], [4, 6, 6, 6, 6, 4, 4]


@pytest.mark.parametrize("preset", ["tf1", "caffe"])
@pytest.mark.parametrize("architecture, expected", [("ssd300", 8732), ("ssd512", 24564)])
def test_counts(architecture, expected, preset):
    anchors = generate_anchors(_config(architecture, preset))
    assert anchors.shape == (expected, 4)
    assert anchors.dtype == np.float32
    assert sum(num_anchors_per_layer(_config(architecture, preset))) == expected


def test_ssd300_tf1_layer0_first_cell():
    anchors = generate_anchors(_config())
    c = 0.5 * 8 / 300
    expected = [
        _box(c, c, 0.1414, 0.1414),
        _box(c, c, 0.1, 0.1),
        _box(c, c, 0.1 / math.sqrt(2), 0.1 * math.sqrt(2)),
        _box(c, c, 0.1 / math.sqrt(0.5), 0.1 * math.sqrt(0.5)),
    ]
    np.testing.assert_allclose(anchors[0:4], expected, atol=1e-6)


def test_ssd300_tf1_layer1_cell():
    anchors = generate_anchors(_config())
    y, x = 3, 7
    start = 38 * 38 * 4 + (y * 19 + x) * 6
    cy, cx = (3 + 0.5) * 16 / 300, (7 + 0.5) * 16 / 300
    s = 0.2
    expected = [
        _box(cy, cx, 0.2739, 0.2739),
        _box(cy, cx, s, s),
        _box(cy, cx, s / math.sqrt(2), s * math.sqrt(2)),
        _box(cy, cx, s / math.sqrt(3), s * math.sqrt(3)),
        _box(cy, cx, s * math.sqrt(2), s / math.sqrt(2)),
        _box(cy, cx, s * math.sqrt(3), s / math.sqrt(3)),
    ]
    np.testing.assert_allclose(anchors[start:start + 6], expected, atol=1e-6)


def test_ssd300_tf1_last_layer_single_location():
    anchors = generate_anchors(_config())
    c = 0.5 * 300 / 300
    expected = [
        _box(c, c, 0.9836, 0.9836),
        _box(c, c, 0.9, 0.9),
        _box(c, c, 0.9 / math.sqrt(2), 0.9 * math.sqrt(2)),
        _box(c, c, 0.9 * math.sqrt(2), 0.9 / math.sqrt(2)),
    ]
    np.testing.assert_allclose(anchors[-4:], expected, atol=1e-6)
    # the 0.9 * sqrt(2) sides extend past the image: no clipping by default
    assert anchors[-2, 1] < 0 and anchors[-2, 3] > 1


def test_ssd300_caffe_layer2_cell():
    anchors = generate_anchors(_config(preset="caffe"))
    y, x = 9, 2
    start = 38 * 38 * 4 + 19 * 19 * 6 + (y * 10 + x) * 6
    cy, cx = (9 + 0.5) * 32 / 300, (2 + 0.5) * 32 / 300
    m, big = 111 / 300, math.sqrt(111 * 162) / 300
    expected = [
        _box(cy, cx, m, m),
        _box(cy, cx, big, big),
        _box(cy, cx, m / math.sqrt(2), m * math.sqrt(2)),
        _box(cy, cx, m * math.sqrt(2), m / math.sqrt(2)),
        _box(cy, cx, m / math.sqrt(3), m * math.sqrt(3)),
        _box(cy, cx, m * math.sqrt(3), m / math.sqrt(3)),
    ]
    np.testing.assert_allclose(anchors[start:start + 6], expected, atol=1e-6)


def test_ssd300_caffe_layer4_step_100():
    anchors = generate_anchors(_config(preset="caffe"))
    index = _flat_index(SSD300_MAPS, SSD300_K, 4, 2, 1, 1)
    cy, cx = 2.5 * 100 / 300, 1.5 * 100 / 300
    side = math.sqrt(213 * 264) / 300
    np.testing.assert_allclose(anchors[index], _box(cy, cx, side, side), atol=1e-6)


def test_ssd512_tf1_sizes_from_caffe_table():
    anchors = generate_anchors(_config("ssd512", "tf1"))
    index = _flat_index(SSD512_MAPS, SSD512_K, 6, 0, 0, 0)
    side = math.sqrt(460.8 * 537.6) / 512
    np.testing.assert_allclose(anchors[index], _box(0.5, 0.5, side, side), atol=1e-6)
    index = _flat_index(SSD512_MAPS, SSD512_K, 1, 31, 0, 2)
    cy, cx = 31.5 * 16 / 512, 0.5 * 16 / 512
    s = 76.8 / 512
    np.testing.assert_allclose(anchors[index], _box(cy, cx, s / math.sqrt(2), s * math.sqrt(2)),
                               atol=1e-6)


# --- Caffe's PriorBox truncates min/max sizes to whole pixels ---------------------------------

def test_caffe_pixel_size_truncates():
    assert [caffe_pixel_size(v) for v in (35.84, 76.8, 20.48, 51.2, 542.72, 30.0, 1.0)] == \
        [35, 76, 20, 51, 542, 30, 1]


def _caffe_location(m, big, wide):
    """(height, width) at one location, hand-written from Caffe's box order."""
    sizes = [(m, m), (big, big), (m / math.sqrt(2), m * math.sqrt(2)), (m * math.sqrt(2), m / math.sqrt(2))]
    if wide:
        sizes += [(m / math.sqrt(3), m * math.sqrt(3)), (m * math.sqrt(3), m / math.sqrt(3))]
    return sizes


def test_ssd512_caffe_boxes_use_truncated_sizes():
    anchors = generate_anchors(_config("ssd512", "caffe"))
    # conv4_3, cell (0, 0): min 35.84 -> 35, max 76.8 -> 76
    c = 0.5 * 8 / 512
    expected = [_box(c, c, h, w) for h, w in _caffe_location(35 / 512, math.sqrt(35 * 76) / 512, False)]
    np.testing.assert_allclose(anchors[0:4], expected, atol=1e-6)
    np.testing.assert_allclose(anchors[2], _box(c, c, 35 / math.sqrt(2) / 512, 35 * math.sqrt(2) / 512),
                               atol=1e-7)
    # conv9_2 (layer 3), cell (5, 2): min 230.4 -> 230, max 307.2 -> 307, six boxes
    start = _flat_index(SSD512_MAPS, SSD512_K, 3, 5, 2, 0)
    cy, cx = 5.5 * 64 / 512, 2.5 * 64 / 512
    expected = [_box(cy, cx, h, w) for h, w in _caffe_location(230 / 512, math.sqrt(230 * 307) / 512, True)]
    np.testing.assert_allclose(anchors[start:start + 6], expected, atol=1e-6)
    # the last layer: min 460.8 -> 460, max 537.6 -> 537
    expected = [_box(0.5, 0.5, h, w) for h, w in _caffe_location(460 / 512, math.sqrt(460 * 537) / 512, False)]
    np.testing.assert_allclose(anchors[-4:], expected, atol=1e-6)
    # not the fractional sizes: 35.84 / 512 differs from 35 / 512 by 1.6e-3
    assert abs((anchors[0, 2] - anchors[0, 0]) - 35.84 / 512) > 1e-3


def test_ssd512_coco_boxes_use_truncated_sizes():
    anchors = generate_anchors(load_config("ssd512_coco"))
    c = 0.5 * 8 / 512
    # conv4_3: min 20.48 -> 20, max 51.2 -> 51
    expected = [_box(c, c, h, w) for h, w in _caffe_location(20 / 512, math.sqrt(20 * 51) / 512, False)]
    np.testing.assert_allclose(anchors[0:4], expected, atol=1e-6)
    # fc7, cell (31, 0): min 51.2 -> 51, max 133.12 -> 133
    start = _flat_index(SSD512_MAPS, SSD512_K, 1, 31, 0, 0)
    cy, cx = 31.5 * 16 / 512, 0.5 * 16 / 512
    expected = [_box(cy, cx, h, w) for h, w in _caffe_location(51 / 512, math.sqrt(51 * 133) / 512, True)]
    np.testing.assert_allclose(anchors[start:start + 6], expected, atol=1e-6)
    # the last layer: min 460.8 -> 460, max 542.72 -> 542
    expected = [_box(0.5, 0.5, h, w) for h, w in _caffe_location(460 / 512, math.sqrt(460 * 542) / 512, False)]
    np.testing.assert_allclose(anchors[-4:], expected, atol=1e-6)


def _untruncated(config, monkeypatch):
    """The boxes as computed before the truncation: the same code with sizes used as given."""
    with monkeypatch.context() as patch:
        patch.setattr(anchor_module, "caffe_pixel_size", lambda size: size)
        return generate_anchors(config)


@pytest.mark.parametrize("config", [lambda: _config("ssd300", "caffe"), lambda: load_config("ssd300_coco")],
                         ids=["ssd300_voc_caffe", "ssd300_coco"])
def test_integer_sizes_leave_the_boxes_unchanged(config, monkeypatch):
    config = config()
    assert all(float(v).is_integer() for v in config.anchors.min_sizes + config.anchors.max_sizes)
    np.testing.assert_array_equal(generate_anchors(config), _untruncated(config, monkeypatch))


@pytest.mark.parametrize("name", ["ssd512_voc0712", "ssd512_coco"])
def test_fractional_sizes_change_the_boxes(name, monkeypatch):
    config = load_config(name)
    assert not np.allclose(generate_anchors(config), _untruncated(config, monkeypatch), atol=1e-4)


def test_tf1_preset_keeps_fractional_ssd512_sizes():
    # the tf1 preset's SSD512 scales are the Caffe table as fractions, not truncated
    config = _config("ssd512", "tf1")
    assert config.anchors.scales[0] == pytest.approx(35.84 / 512)
    anchors = generate_anchors(config)
    np.testing.assert_allclose(anchors[1, 2] - anchors[1, 0], 35.84 / 512, atol=1e-6)


@pytest.mark.parametrize("architecture, maps, per_location",
                         [("ssd300", SSD300_MAPS, SSD300_K), ("ssd512", SSD512_MAPS, SSD512_K)])
def test_flat_index_layout(architecture, maps, per_location):
    config = _config(architecture)
    anchors = generate_anchors(config)
    size = config.model.input_size
    steps = config.anchors.steps
    rng = np.random.default_rng(0)
    for _ in range(50):
        layer = int(rng.integers(len(maps)))
        y, x = rng.integers(maps[layer], size=2)
        k = int(rng.integers(per_location[layer]))
        box = anchors[_flat_index(maps, per_location, layer, y, x, k)]
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        np.testing.assert_allclose(centre, ((y + 0.5) * steps[layer] / size,
                                            (x + 0.5) * steps[layer] / size), atol=1e-6)
        # the first box at each location is the tf1 preset's extra square
        if k == 0:
            side = config.anchors.extra_scales[layer]
            np.testing.assert_allclose([box[2] - box[0], box[3] - box[1]], [side, side], atol=1e-6)


@pytest.mark.parametrize("preset", ["tf1", "caffe"])
def test_symmetry(preset):
    config = _config(preset=preset)
    anchors = generate_anchors(config).astype(np.float64)
    start = 0
    for f, k, step in zip(SSD300_MAPS, SSD300_K, config.anchors.steps):
        grid = anchors[start:start + f * f * k].reshape(f, f, k, 4)
        start += f * f * k
        # the grid spans [0, F * step] pixels (304 for 38 x 8, not 300): mirroring that span maps
        # cell (y, x) to (y, F-1-x) with the same box shapes
        span = f * step / 300
        mirrored = np.stack([grid[..., 0], span - grid[..., 3], grid[..., 2], span - grid[..., 1]], -1)
        np.testing.assert_allclose(mirrored[:, ::-1], grid, atol=1e-5)
        # transposing y and x maps each ratio-r box to its ratio-1/r twin, and squares to themselves
        transposed = grid.transpose(1, 0, 2, 3)[..., [1, 0, 3, 2]]
        h = grid[..., 2] - grid[..., 0]
        w = grid[..., 3] - grid[..., 1]
        th = transposed[..., 2] - transposed[..., 0]
        tw = transposed[..., 3] - transposed[..., 1]
        for a in range(k):
            twins = [b for b in range(k)
                     if np.allclose(h[..., b], tw[..., a], atol=1e-6)
                     and np.allclose(w[..., b], th[..., a], atol=1e-6)]
            assert twins, f"layer with {f}x{f} cells: box {a} has no transposed twin"
    assert start == len(anchors)


def test_clip():
    anchors = generate_anchors(_config(**{"anchors.clip": True}))
    assert anchors.min() >= 0 and anchors.max() <= 1
    unclipped = generate_anchors(_config())
    assert unclipped.min() < 0 and unclipped.max() > 1
    inside = np.all((unclipped >= 0) & (unclipped <= 1), axis=1)
    np.testing.assert_array_equal(anchors[inside], unclipped[inside])


# --- the tfod preset: the TF Object Detection API's ssdlite_mobilenet_v2 anchors -------------

SSDLITE_MAPS = [20, 10, 5, 3, 2, 1]
TFOD_SCALES = [0.2, 0.35, 0.5, 0.65, 0.8, 0.95]  # 0.2 + (0.95 - 0.2)(k - 1) / 5, by hand


def test_tfod_preset_scales_ratios_and_count_by_hand():
    config = load_config("ssdlite320_mobilenetv2_coco")
    a = config.anchors
    np.testing.assert_allclose(a.scales, TFOD_SCALES, atol=1e-12)
    next_scales = TFOD_SCALES[1:] + [1.0]
    np.testing.assert_allclose(a.extra_scales[1:], [math.sqrt(s * t) for s, t in
                                                    zip(TFOD_SCALES[1:], next_scales[1:])])
    assert a.extra_scales[0] == 0.1
    assert a.aspect_ratios[0] == [2.0, 0.5]
    assert a.aspect_ratios[1:] == [[1.0, 2.0, 0.5, 3.0, 1.0 / 3.0]] * 5
    assert num_anchors_per_layer(config) == [1200, 600, 150, 54, 24, 6]
    assert generate_anchors(config).shape == (20 * 20 * 3 + (100 + 25 + 9 + 4 + 1) * 6, 4) == (2034, 4)


def test_tfod_lowest_layer_boxes_by_hand():
    config = load_config("ssdlite320_mobilenetv2_voc")
    boxes = generate_anchors(config)
    r2 = math.sqrt(2.0)
    # location (y=0, x=0) of the 20x20 map: centre 0.5 * 16 / 320 = 0.025
    c = 0.025
    expected = [_box(c, c, 0.2 / r2, 0.2 * r2),  # (s_1, ratio 2): wider than tall
                _box(c, c, 0.2 * r2, 0.2 / r2),  # (s_1, ratio 1/2)
                _box(c, c, 0.1, 0.1)]  # the 0.1 square, last
    np.testing.assert_allclose(boxes[:3], expected, atol=1e-6)
    # location (y=3, x=7): centres (3.5 / 20, 7.5 / 20)
    index = _flat_index(SSDLITE_MAPS, [3, 6, 6, 6, 6, 6], 0, 3, 7, 0)
    np.testing.assert_allclose(boxes[index + 2], _box(3.5 / 20, 7.5 / 20, 0.1, 0.1), atol=1e-6)


def test_tfod_order_at_a_location_is_ratios_then_the_extra_square():
    config = load_config("ssdlite320_mobilenetv2_voc")
    boxes = generate_anchors(config)
    per_location = [3, 6, 6, 6, 6, 6]
    # the 3x3 map (layer 3): centres evenly spread, (i + 0.5) / 3, the step being 320 / 3
    index = _flat_index(SSDLITE_MAPS, per_location, 3, 2, 1, 0)
    cy, cx, s = 2.5 / 3, 1.5 / 3, 0.65
    expected = [_box(cy, cx, s / math.sqrt(r), s * math.sqrt(r)) for r in (1, 2, 0.5, 3, 1 / 3)]
    extra = math.sqrt(0.65 * 0.8)
    expected.append(_box(cy, cx, extra, extra))
    np.testing.assert_allclose(boxes[index:index + 6], expected, atol=1e-6)
    # the last box of all: the 1x1 map's extra square of sqrt(0.95 * 1.0), centred
    np.testing.assert_allclose(boxes[-1], _box(0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)),
                               atol=1e-6)


def test_tfod_preset_on_ssd300_uses_linear_scales_over_its_six_maps():
    config = _config(preset="tfod", **{"anchors.aspect_ratios": [], "anchors.scales": [],
                                       "anchors.extra_scales": []})
    assert config.anchors.boxes_per_location == [3, 6, 6, 6, 6, 6]
    np.testing.assert_allclose(config.anchors.scales, TFOD_SCALES, atol=1e-12)
    assert generate_anchors(config).shape[0] == 38 * 38 * 3 + (19 * 19 + 100 + 25 + 9 + 1) * 6


SSDLITE300_MAPS, SSDLITE300_K = [19, 10, 5, 3, 2, 1], [3, 6, 6, 6, 6, 6]


def test_ssdlite300_geometry_and_count_by_hand():
    config = load_config("ssdlite300_mobilenetv2_coco_tfod")
    assert config.anchors.feature_map_sizes == SSDLITE300_MAPS
    assert config.anchors.boxes_per_location == SSDLITE300_K
    # 19 * 19 * 3 + (100 + 25 + 9 + 4 + 1) * 6 = 1083 + 834
    assert num_anchors_per_layer(config) == [1083, 600, 150, 54, 24, 6]
    assert generate_anchors(config).shape == (1917, 4)


def test_ssdlite300_boxes_in_the_apis_order_by_hand():
    """The API's box specs: lowest map (0.1, 1), (0.2, 2), (0.2, 0.5); then (s, r) for r in 1, 2,
    0.5, 3, 0.3333 and (sqrt(s s'), 1); h = s / sqrt(r), w = s sqrt(r); centres (i + 0.5) / F."""
    boxes = generate_anchors(load_config("ssdlite300_mobilenetv2_coco_tfod"))
    # lowest map, cell (0, 0): centre 0.5 / 19 = 0.0263158
    c = 0.5 / 19
    np.testing.assert_allclose(boxes[0], [c - 0.05, c - 0.05, c + 0.05, c + 0.05], atol=1e-6)
    np.testing.assert_allclose(boxes[0], [-0.0236842, -0.0236842, 0.0763158, 0.0763158], atol=1e-6)
    np.testing.assert_allclose(boxes[1], [-0.0443949, -0.1151056, 0.0970265, 0.1677371], atol=1e-6)
    np.testing.assert_allclose(boxes[2], [-0.1151056, -0.0443949, 0.1677371, 0.0970265], atol=1e-6)
    # lowest map, cell (y=4, x=11): the 0.1 square first again
    index = _flat_index(SSDLITE300_MAPS, SSDLITE300_K, 0, 4, 11, 0)
    np.testing.assert_allclose(boxes[index], _box(4.5 / 19, 11.5 / 19, 0.1, 0.1), atol=1e-6)
    # 10x10 map, cell (y=2, x=5): s = 0.35, centre (0.25, 0.55)
    index = _flat_index(SSDLITE300_MAPS, SSDLITE300_K, 1, 2, 5, 0)
    np.testing.assert_allclose(boxes[index], [0.075, 0.375, 0.425, 0.725], atol=1e-6)  # (0.35, 1)
    # (0.35, 0.3333): h = 0.35 / sqrt(0.3333) = 0.606248, w = 0.212188 (1/3 would give 0.606218)
    np.testing.assert_allclose(boxes[index + 4], [-0.0531240, 0.4489688, 0.5531240, 0.6510312],
                               atol=1e-6)
    # the extra square sqrt(0.35 * 0.5) = 0.41833 comes last on every map but the lowest
    np.testing.assert_allclose(boxes[index + 5], [0.0408350, 0.3408350, 0.4591650, 0.7591650],
                               atol=1e-6)


def test_lowest_square_first_is_a_tfod_option_and_leaves_ssdlite320_unchanged():
    default = load_config("ssdlite320_mobilenetv2_coco")
    assert default.anchors.lowest_square_first is False
    reordered = load_config("ssdlite320_mobilenetv2_coco", {"anchors.lowest_square_first": True})
    before, after = generate_anchors(default), generate_anchors(reordered)
    lowest = 20 * 20 * 3
    np.testing.assert_array_equal(after[:lowest].reshape(-1, 3, 4),
                                  before[:lowest].reshape(-1, 3, 4)[:, [2, 0, 1]])
    np.testing.assert_array_equal(after[lowest:], before[lowest:])
    with pytest.raises(ConfigError, match="anchors.lowest_square_first: orders the 'tfod'"):
        _config(**{"anchors.lowest_square_first": True})
