import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from ssd.data import orientation
from ssd.data.orientation import OrientationChoice, choose_orientation


def asymmetric_pixels(height=5, width=7):
    # Every pixel distinct, so any wrong flip or turn shows.
    values = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    return values


def png_with_orientation(pixels, k):
    exif = Image.Exif()
    exif[orientation.ORIENTATION_TAG] = k
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("k", range(1, 9))
def test_apply_orientation_matches_pillows_exif_transpose(k):
    data = png_with_orientation(asymmetric_pixels(), k)
    assert orientation.exif_orientation(data) == k
    with Image.open(io.BytesIO(data)) as stored:
        stored.load()
        reference = np.asarray(ImageOps.exif_transpose(stored))
        ours = np.asarray(orientation.apply_orientation(stored, k))
    np.testing.assert_array_equal(ours, reference)
    assert ours.shape[1::-1] == orientation.upright_size(7, 5, k)
    assert orientation.swaps_axes(k) == (ours.shape[:2] == (7, 5))


def test_missing_or_bad_tags_read_as_upright():
    buffer = io.BytesIO()
    Image.fromarray(asymmetric_pixels()).save(buffer, format="JPEG")
    assert orientation.exif_orientation(buffer.getvalue()) == 1
    assert orientation.exif_orientation(png_with_orientation(asymmetric_pixels(), 9)) == 1
    assert orientation.exif_orientation(b"not an image") == 1


STORED = (80, 60)    # width, height of the stored grid
UPRIGHT_5_8 = (60, 80)


@pytest.mark.parametrize("policy", ["auto", "apply", "ignore"])
def test_a_size_that_matches_one_grid_decides_whatever_the_policy(policy):
    for k in (5, 6, 7, 8):
        assert choose_orientation(k, STORED, UPRIGHT_5_8, policy) == OrientationChoice(True, "size")
        assert choose_orientation(k, STORED, STORED, policy) == OrientationChoice(False, "size")


@pytest.mark.parametrize("policy, upright", [("auto", False), ("apply", True), ("ignore", False)])
def test_the_policy_decides_when_the_size_cannot_tell(policy, upright):
    undecidable = [
        (6, STORED, None),           # no usable <size>
        (6, STORED, (100, 100)),     # a size matching neither grid
        (6, (64, 64), (64, 64)),     # square: both grids have the same size
        (8, (64, 64), None),
        (2, STORED, STORED),         # orientations 2-4 keep width and height
        (3, STORED, STORED),
        (4, STORED, None),
    ]
    for k, stored, annotated in undecidable:
        assert choose_orientation(k, stored, annotated, policy) == OrientationChoice(upright, "policy"), k


def test_upright_images_have_nothing_to_choose():
    for policy in ("auto", "apply", "ignore"):
        assert choose_orientation(1, STORED, (60, 80), policy) == OrientationChoice(False, "tag")
    with pytest.raises(ValueError, match="unknown EXIF policy 'sometimes'"):
        choose_orientation(6, STORED, None, "sometimes")


def test_orient_for_annotation_returns_the_annotated_grid():
    pixels = asymmetric_pixels()  # stored 7 wide, 5 high
    with Image.open(io.BytesIO(png_with_orientation(pixels, 8))) as stored:
        stored.load()
        upright, k, choice = orientation.orient_for_annotation(stored, (5, 7), "auto")
        assert (k, choice) == (8, OrientationChoice(True, "size"))
        np.testing.assert_array_equal(np.asarray(upright), np.rot90(pixels, 1))  # ROTATE_90: counter-clockwise
        kept, _, choice = orientation.orient_for_annotation(stored, None, "auto")
        assert kept is stored and choice == OrientationChoice(False, "policy")
