import numpy as np
from PIL import Image

from ssd import draw


def test_class_colors_are_distinct_and_stable():
    colors = draw.class_colors(21)
    assert len(set(colors)) == 21
    assert colors == draw.class_colors(21)


def test_draw_boxes_outlines_box_edges_in_class_colour():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    colors = draw.class_colors(3)
    out = draw.draw_boxes(image, np.array([[20.0, 40.0, 80.0, 160.0]]), [2], ["a", "b"],
                          scores=[0.9], outline_only=True)
    pixels = np.asarray(out)
    assert out.size == image.size
    assert tuple(pixels[50, 40]) == colors[2]      # left edge
    assert tuple(pixels[20, 100]) == colors[2]     # top edge
    assert tuple(pixels[50, 100]) == (0, 0, 0)     # inside untouched
    assert np.asarray(image).sum() == 0            # input not modified


def test_score_threshold_skips_weak_boxes_and_labels_are_drawn():
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    out = draw.draw_boxes(image, np.array([[50.0, 50.0, 150.0, 150.0]]), [1], ["a"], scores=[0.2],
                          score_threshold=0.5)
    assert np.asarray(out).sum() == 0
    labelled = np.asarray(draw.draw_boxes(image, np.array([[50.0, 50.0, 150.0, 150.0]]), [1], ["a"],
                                          scores=[0.9]))
    outlined = np.asarray(draw.draw_boxes(image, np.array([[50.0, 50.0, 150.0, 150.0]]), [1], ["a"],
                                          scores=[0.9], outline_only=True))
    assert (labelled != outlined).any()  # the label tag adds pixels above the box
    assert (labelled[30:50, 50:100] != 0).any()


def test_side_by_side():
    a, b = Image.new("RGB", (50, 40), (255, 0, 0)), Image.new("RGB", (60, 30), (0, 255, 0))
    both = draw.side_by_side(a, b)
    assert both.size == (50 + 8 + 60, 40)
    assert both.getpixel((10, 10)) == (255, 0, 0) and both.getpixel((70, 10)) == (0, 255, 0)


RECALL, PRECISION = np.array([0.0, 0.25, 0.5, 0.75]), np.array([1.0, 0.9, 0.8, 0.4])
CURVES = {"a": (RECALL, PRECISION),
          "b": (np.array([]), np.array([])),                   # no ground truth, no detections
          "c": (np.array([]), np.array([])),                   # ground truth, no detections
          "d": (np.array([0.5, np.nan]), np.array([0.6, 0.3]))}  # one finite point
APS = {"a": 0.7, "b": None, "c": 0.0, "d": 0.123}


def test_precision_recall_figure_has_readable_axes_and_a_legend_with_aps():
    figure = draw.precision_recall_figure(CURVES, APS, title="test")
    axes, = figure.axes
    assert axes.get_xlim() == (0.0, 1.0) and axes.get_ylim() == (0.0, 1.02)  # 1.0 stays visible
    assert axes.get_xlabel() == "recall" and axes.get_ylabel() == "precision"
    assert axes.get_title() == "test"
    np.testing.assert_allclose(axes.get_xticks(), np.linspace(0, 1, 11))
    np.testing.assert_allclose(axes.get_yticks(), np.linspace(0, 1, 11))
    assert all(line.get_visible() for line in axes.xaxis.get_gridlines())
    legend, = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "a (AP 70.0)", "b (no ground truth)", "c (AP 0.0, no detections)", "d (AP 12.3)"]
    lines = {line.get_label(): line for line in axes.get_lines()}
    np.testing.assert_array_equal(lines["a (AP 70.0)"].get_xdata(), RECALL)
    np.testing.assert_array_equal(lines["a (AP 70.0)"].get_ydata(), PRECISION)
    np.testing.assert_array_equal(lines["d (AP 12.3)"].get_xdata(), [0.5])
    assert len(lines["b (no ground truth)"].get_xdata()) == 0


def test_precision_recall_image_puts_each_point_where_the_axes_say():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    image = draw.draw_precision_recall(CURVES, APS, title="test")
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    figure = draw.precision_recall_figure(CURVES, APS, title="test")
    FigureCanvasAgg(figure).draw()
    width, height = (figure.get_size_inches() * figure.dpi).round().astype(int)
    assert image.size == (width, height) == (880, 640)
    pixels = np.asarray(image).astype(int)
    line_color = np.array([31, 119, 180])  # matplotlib's tab10 blue, the first class's colour
    to_pixels = figure.axes[0].transData
    for recall, precision in zip(RECALL, PRECISION):
        x, y = to_pixels.transform((recall, precision))
        row, column = int(round(height - y)), int(round(x))
        patch = pixels[row - 2:row + 3, column - 2:column + 3]
        assert (np.abs(patch - line_color).sum(axis=-1) < 60).any(), (recall, precision)
    x, y = to_pixels.transform((0.9, 0.95))  # no curve there: background or grid only
    patch = pixels[int(height - y) - 2:int(height - y) + 3, int(x) - 2:int(x) + 3]
    assert (patch > 200).all()


def test_precision_recall_image_scales_and_lists_many_classes():
    many = {f"class{i}": (RECALL, PRECISION) for i in range(30)}
    image = draw.draw_precision_recall(many, {name: 0.5 for name in many}, panel_size=440)
    assert image.size == (2 * (640 + 2 * 240), 2 * 640)  # 200 dpi, two legend columns
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 50  # drawn, not blank
    empty = draw.draw_precision_recall({}, {}, title="nothing evaluated")
    assert empty.size == (880, 640)
