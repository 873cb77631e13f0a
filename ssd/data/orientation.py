"""EXIF orientation: which pixel grid an annotation refers to, and turning pixels upright.

Cameras and phones store a photo in the sensor's grid and record in the EXIF Orientation tag
(0x0112) how a viewer must transform it to show it upright: 1 is upright already, 2-4 flip or turn
it within the same width and height, 5-8 transpose it (width and height swap). TensorFlow's JPEG
decoder ignores the tag and returns the stored grid, while most annotation tools show the upright
picture; annotations therefore refer to either frame, and the boxes are only right on the pixels
of that frame. Boxes are never transformed here: the pixels are chosen to match the annotation.

The rule (`choose_orientation`), one per image:
  * the annotated size matches the upright size and not the stored one: upright pixels;
  * it matches the stored size and not the upright one: stored pixels;
  * otherwise the size cannot tell (no usable size, a size matching neither, a square image, or an
    orientation 2-4 that keeps width and height): the policy decides. "auto" keeps the stored grid
    (and the caller warns, since the tag says the picture is not upright), "apply" turns every
    such image upright, "ignore" keeps every such image as stored.
"""

from __future__ import annotations

import dataclasses
import io

from PIL import Image

ORIENTATION_TAG = 0x0112
UPRIGHT = 1
EXIF_POLICIES = ("auto", "apply", "ignore")

# The transposition that shows a stored image upright, per tag value (the EXIF 2.3 definitions,
# which Pillow's ImageOps.exif_transpose follows as well).
_TO_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclasses.dataclass(frozen=True)
class OrientationChoice:
    upright: bool    # True: transpose the stored pixels as the tag says; False: keep the stored grid
    decided_by: str  # "tag" (orientation 1: nothing to choose), "size" or "policy"


def orientation_of(image: Image.Image) -> int:
    """The image's EXIF orientation 1..8; 1 when the tag is absent, unreadable or out of range."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, UPRIGHT)
    except Exception:  # malformed EXIF blocks raise assorted errors; the picture itself is fine
        return UPRIGHT
    return value if isinstance(value, int) and 1 <= value <= 8 else UPRIGHT


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation of encoded image bytes (reads the header only, not the pixels)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return orientation_of(image)
    except Exception:  # not an image: nothing says it is turned
        return UPRIGHT


def swaps_axes(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of the picture once shown upright."""
    return (height, width) if swaps_axes(orientation) else (width, height)


def apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """The stored `image` transposed upright per `orientation` (an unchanged image for 1)."""
    method = _TO_UPRIGHT.get(orientation)
    return image if method is None else image.transpose(method)


def check_policy(policy: str) -> None:
    if policy not in EXIF_POLICIES:
        raise ValueError(f"unknown EXIF policy {policy!r}; expected one of {', '.join(EXIF_POLICIES)}")


def choose_orientation(orientation: int, stored_size: tuple[int, int],
                       annotated_size: tuple[int, int] | None, policy: str) -> OrientationChoice:
    """Which grid the annotation of an image refers to (see the module docstring).

    Sizes are (width, height); `annotated_size` is None when the annotation gives no usable size.
    """
    check_policy(policy)
    if orientation not in _TO_UPRIGHT:
        return OrientationChoice(upright=False, decided_by="tag")
    stored = tuple(stored_size)
    upright = upright_size(*stored, orientation)
    if annotated_size is not None and stored != upright:
        annotated = tuple(annotated_size)
        if annotated == upright:
            return OrientationChoice(upright=True, decided_by="size")
        if annotated == stored:
            return OrientationChoice(upright=False, decided_by="size")
    return OrientationChoice(upright=policy == "apply", decided_by="policy")


def orient_for_annotation(image: Image.Image, annotated_size: tuple[int, int] | None, policy: str
                          ) -> tuple[Image.Image, int, OrientationChoice]:
    """(the pixels `image`'s annotation refers to, the EXIF orientation, the choice made).

    What every reader of annotated photos calls: converters, and drawing ground truth.
    """
    orientation = orientation_of(image)
    choice = choose_orientation(orientation, image.size, annotated_size, policy)
    return (apply_orientation(image, orientation) if choice.upright else image), orientation, choice
