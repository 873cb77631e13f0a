import numpy as np

from ssd.voc.coords import normalized_to_voc, voc_to_normalized


def test_whole_image_maps_to_unit_box():
    np.testing.assert_allclose(voc_to_normalized([[1, 1, 500, 375]], 375, 500), [[0, 0, 1, 1]])


def test_single_pixel_box_and_round_trip():
    # pixel (x=10, y=20) alone spans [9, 10] x [19, 20]
    np.testing.assert_allclose(voc_to_normalized([[10, 20, 10, 20]], 100, 200),
                               [[19 / 100, 9 / 200, 20 / 100, 10 / 200]])
    boxes = np.array([[3, 7, 48.5, 90], [1, 1, 2, 2]])
    np.testing.assert_allclose(normalized_to_voc(voc_to_normalized(boxes, 120, 64), 120, 64), boxes)
