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


def test_side_by_side_and_precision_recall_panels():
    a, b = Image.new("RGB", (50, 40), (255, 0, 0)), Image.new("RGB", (60, 30), (0, 255, 0))
    both = draw.side_by_side(a, b)
    assert both.size == (50 + 8 + 60, 40)
    assert both.getpixel((10, 10)) == (255, 0, 0) and both.getpixel((70, 10)) == (0, 255, 0)
    picture = draw.draw_precision_recall({"a": (np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.8, 0.5])),
                                          "b": (np.array([]), np.array([]))}, {"a": 0.7, "b": None},
                                         title="test")
    assert picture.size[0] == 2 * 220
    assert (np.asarray(picture) != 255).any()
