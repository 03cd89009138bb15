"""Image bytes -> model input tensors, exactly as the model's timm config says.

The reference pipeline (the LAION aesthetic predictor) opens the file with PIL, converts it to
RGB, and applies CLIP's preprocessing. timm's ``resolve_data_config`` + ``create_transform`` for
the OpenAI ViT-L/14 give the same steps (bicubic resize of the short side to 224, centre crop,
CLIP mean/std), and they follow any other timm model's own config too, so the transform is
never written by hand here.

Decoding looks at the content, not the file extension (img2dataset stores PNG, WebP or even
HTML bodies as ``.jpg``), but only among :data:`ALLOWED_FORMATS`: Pillow would otherwise also
open EPS/PostScript, which it renders by starting Ghostscript (``gs``), so a ``.jpg`` member
holding PostScript would run a program on the worker. Everything that reads image bytes from a
dataset (both fronts, the report) opens them with :func:`open_image`. Anything we cannot decode,
and any image over the pixel limit, raises :class:`ImageDecodeError` with a short reason that
ends up in the row's ``error`` column. EXIF
orientation is not applied, as in the reference, so scores match it.
"""
from __future__ import annotations

import io
import warnings
from typing import Callable

from PIL import Image, UnidentifiedImageError

#: Tar member extensions taken as the image of a sample, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")

#: Images with more pixels than this are refused before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own Image.MAX_IMAGE_PIXELS default


#: The Pillow formats an image from a dataset may be in (JPEG includes multi-picture MPO files).
#: Never EPS/PS (Pillow runs Ghostscript to render them) nor any other format whose decoder
#: starts a program or parses a document.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


class ImageDecodeError(Exception):
    """The bytes are not a decodable image (the message is the per-row reason)."""


def pick_image(members: list[tuple[str, object, bytes]]) -> tuple[str, bytes] | None:
    """The sample's image member ``(ext, bytes)``, by extension preference; None if it has none."""
    by_ext = {}
    for ext, _, data in members:
        by_ext.setdefault(ext.lower(), data)
    for ext in IMAGE_EXTENSIONS:
        if ext in by_ext:
            return ext, by_ext[ext]
    return None


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read only the header of ``data``: the opened (not yet decoded) image, or
    :class:`ImageDecodeError` saying why it is not an image or is too large. Cheap enough to
    check every image of a shard before any pixel is decoded. Only :data:`ALLOWED_FORMATS` open:
    PostScript and every other format are "not an image PIL can read"."""
    if not data:
        raise ImageDecodeError("empty image file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image PIL can read (starts with {data[:12]!r}; "
                               f"formats read: {', '.join(ALLOWED_FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}")
    return image


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` into an RGB PIL image, or raise :class:`ImageDecodeError` saying why."""
    image = open_image(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from None


def encode_jpeg(pixels, quality: int = 92) -> bytes:
    """``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` pixels -> JPEG bytes (other dtypes clipped to
    uint8, channels past 3 dropped, alpha dropped), for writing images that exist only as pixels."""
    import numpy as np
    from PIL import Image as PILImage  # looked up per call: NeMo Curator's tests stand a stub in for PIL

    img = pixels if pixels.dtype == np.uint8 else np.clip(pixels, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        img = img[..., :3]
    mode = "L" if img.ndim == 2 else ("RGBA" if img.shape[2] == 4 else "RGB")
    image = PILImage.fromarray(img, mode=mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="JPEG", quality=quality)
    except OSError:  # JPEG has no alpha channel
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def data_config(model) -> dict:
    """The model's preprocessing config, as timm resolves it."""
    import timm.data

    return timm.data.resolve_data_config({}, model=model)


def cpu_transform(model) -> Callable:
    """PIL image -> normalised ``(3, H, W)`` float tensor, built by timm from the model's config."""
    import timm.data

    return timm.data.create_transform(**data_config(model), is_training=False)


def make_preprocessor(transform: Callable, max_pixels: int = DEFAULT_MAX_PIXELS) -> Callable[[bytes], object]:
    """bytes -> tensor, for a thread pool; raises :class:`ImageDecodeError` with the reason."""

    check_resize = resize_guard(transform, max_pixels)

    def preprocess(data: bytes):
        image = decode_image(data, max_pixels)
        check_resize(*image.size)
        try:
            return transform(image)
        except Exception as exc:  # e.g. a 1x1 image that a resize cannot handle
            raise ImageDecodeError(f"preprocessing failed: {type(exc).__name__}: {exc}") from None

    return preprocess


def resize_guard(transform, max_pixels: int = DEFAULT_MAX_PIXELS) -> Callable[[int, int], None]:
    """``check(width, height)``: raises :class:`ImageDecodeError` when the transform's resize alone
    would make more than ``max(max_pixels, DEFAULT_MAX_PIXELS)`` pixels.

    An aspect-preserving resize of the short side to 224 turns a 10000x1 image (a few hundred
    bytes) into 224x2240000 before the centre crop: 1.5 GB and seconds of CPU, and 65535x1 would
    take 10 GB and kill the worker with the whole shard. Such images get a per-row reason instead.
    """
    short_side = _short_side_resize(transform)
    limit = max(max_pixels, DEFAULT_MAX_PIXELS)  # a lower max_pixels must not refuse every resize

    def check(width: int, height: int) -> None:
        if short_side is None:
            return
        resized = short_side * short_side * max(width, height) // max(1, min(width, height))
        if resized > limit:
            raise ImageDecodeError(f"image too large to resize: {width}x{height} would become "
                                   f"{resized} pixels at short side {short_side} > limit {limit}")

    return check


def _short_side_resize(transform) -> int | None:
    """The short side the transform's first resize scales to, if it keeps the aspect ratio and
    does not cap the long side (then an extreme aspect ratio makes a huge intermediate image)."""
    for step in getattr(transform, "transforms", ()):
        if type(step).__name__ == "Resize":
            size = step.size
            if getattr(step, "max_size", None) is not None:
                return None
            if isinstance(size, int):
                return size
            if isinstance(size, (list, tuple)) and len(size) == 1:
                return int(size[0])
            return None
    return None
