"""Turns an image file of any common kind into RGB JPEG bytes that TensorFlow decodes reliably.

A file is kept byte for byte when it is an 8-bit, 3-component baseline, extended or progressive
Huffman JPEG that Pillow decodes completely and that ends with its end-of-image marker: those are
exactly what `tf.io.decode_jpeg` reads. Everything else (grayscale, CMYK, alpha, palette, PNG or
other formats behind a .jpg name, 16-bit images, lossless/arithmetic/12-bit JPEG) is decoded and
re-encoded as an RGB JPEG. Files that do not decode completely raise `CorruptImageError`: a
truncated JPEG decodes to a grey bottom that would silently lose annotated objects, so it is never
written.

The EXIF orientation tag is followed by the rule of `ssd.data.orientation`: given the size the annotation
states, the record holds either the stored pixel grid (what `tf.io.decode_jpeg` returns for the
original bytes) or the upright one (decoded, transposed and re-encoded without the tag).
Boxes are never touched here; only the pixels that match them are chosen.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image

from ssd.data.orientation import OrientationChoice, orient_for_annotation

# SOF0 baseline, SOF1 extended sequential, SOF2 progressive (all Huffman-coded).
_KEPT_FRAME_MARKERS = (0xC0, 0xC1, 0xC2)
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
# Transparent pixels have no defined colour; white is what viewers and annotation tools show.
_ALPHA_BACKGROUND = (255, 255, 255)


class CorruptImageError(ValueError):
    """The file is not an image Pillow can decode completely."""


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    encoded: bytes
    height: int
    width: int
    reencoded: str | None  # why the original bytes were not kept ("PNG/RGBA", ...); None if kept
    orientation: int = 1   # the file's EXIF orientation tag
    choice: OrientationChoice = OrientationChoice(upright=False, decided_by="tag")


@dataclasses.dataclass(frozen=True)
class JpegFrame:
    marker: int
    precision: int
    height: int
    width: int
    components: int


@dataclasses.dataclass(frozen=True)
class JpegStructure:
    frame: JpegFrame | None  # the start-of-frame header, None when there is none
    complete: bool           # the end-of-image marker follows the last scan


def _skip_entropy_coded_data(data: bytes, position: int) -> int:
    """Index of the marker ending the scan data that starts at `position`, or -1 if the data ends first."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return -1
        following = data[position + 1]
        if following == 0x00 or following in _STANDALONE_MARKERS:  # stuffed byte or restart marker
            position += 2
        elif following == 0xFF:  # fill byte before a marker
            position += 1
        else:
            return position


def jpeg_structure(data: bytes) -> JpegStructure:
    """Walks the JPEG marker segments of `data` (without decoding) to its end-of-image marker.

    TensorFlow's decoder rejects a JPEG that lacks the end-of-image marker even when every pixel is
    present (Pillow decodes it), so completeness is checked here.
    """
    frame = None
    if data[:2] != b"\xff\xd8":
        return JpegStructure(frame=None, complete=False)
    position = 2
    while position + 1 < len(data):
        if data[position] != 0xFF:
            break
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker == 0xD9:
            return JpegStructure(frame=frame, complete=True)
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if position + 4 > len(data):
            break
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _FRAME_MARKERS and frame is None:
            header = data[position + 4:position + 10]
            if len(header) == 6:
                frame = JpegFrame(marker=marker, precision=header[0],
                                  height=int.from_bytes(header[1:3], "big"),
                                  width=int.from_bytes(header[3:5], "big"), components=header[5])
        position += 2 + length
        if marker == 0xDA:
            position = _skip_entropy_coded_data(data, position)
            if position < 0:
                break
    return JpegStructure(frame=frame, complete=False)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        # 16-bit sources span 0..65535; Pillow's own convert() would clip them at 255.
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _ALPHA_BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _decode(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except Exception as error:  # Pillow raises many types for bad data; all mean "unusable".
        raise CorruptImageError(f"cannot decode image ({type(error).__name__}: {error})") from error
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImageError(f"image has size {width}x{height}")
    return image


def _why_not_kept(data: bytes, image: Image.Image) -> str | None:
    """Why the original bytes cannot go into a record as they are; None if they can."""
    image_format = image.format or "unknown"
    if image_format not in ("JPEG", "MPO") or image.mode != "RGB":
        return f"{image_format}/{image.mode}"
    structure = jpeg_structure(data)
    frame = structure.frame
    if frame is None:
        return "JPEG/no-frame-header"
    if not structure.complete:
        return "JPEG/no-end-marker"
    if (frame.marker not in _KEPT_FRAME_MARKERS or frame.precision != 8 or frame.components != 3
            or (frame.width, frame.height) != image.size):
        return f"JPEG/SOF{frame.marker - 0xC0}-{frame.precision}bit-{frame.components}ch"
    return None


def load_rgb_jpeg(data: bytes, quality: int = 95, annotated_size: tuple[int, int] | None = None,
                  exif_policy: str = "ignore") -> EncodedImage:
    """Original bytes of a plain RGB JPEG, or the image re-encoded as one. Raises CorruptImageError.

    `annotated_size` (width, height) and `exif_policy` choose between the stored and the upright
    pixel grid (`ssd.data.orientation.choose_orientation`); the defaults keep the stored grid.
    """
    stored = _decode(data)
    reason = _why_not_kept(data, stored)
    image, orientation, choice = orient_for_annotation(stored, annotated_size, exif_policy)
    if reason is None and not choice.upright:
        return EncodedImage(encoded=data, height=image.height, width=image.width, reencoded=None,
                            orientation=orientation, choice=choice)
    if choice.upright:
        reason = f"{reason or f'{stored.format}/{stored.mode}'}+EXIF{orientation}"
    try:
        rgb = _to_rgb(image)
    except Exception as error:
        raise CorruptImageError(f"cannot convert {reason} to RGB ({error})") from error
    return EncodedImage(encoded=_encode_jpeg(rgb, quality), height=rgb.height, width=rgb.width,
                        reencoded=reason, orientation=orientation, choice=choice)
