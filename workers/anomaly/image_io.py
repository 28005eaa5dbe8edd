"""Reading images of any depth and layout, plus the specular mask.

Images may be 8- or 16-bit (or float / other integer TIFFs), grayscale, RGB or RGBA, up to tens
of megapixels. :func:`read_image` turns everything into ``float32`` in ``[0, 1]``, shape
``(H, W, C)`` with ``C`` 1 or 3. :func:`read_pixels` keeps 8- and 16-bit pixels as they are (the
engine resizes or cuts tiles first and converts afterwards) and converts any other type to that
float form, so the engine handles exactly three pixel types: uint8, uint16 and float32 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import ImageReadError

# cv2 refuses images above ~1 gigapixel by default; 24 MP is far below, but be explicit.
MAX_PIXELS = 200_000_000


def to_float(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float image array to ``float32`` in ``[0, 1]`` by its dtype range."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return (array.astype(np.float32) - info.min) / float(info.max - info.min)
    raise ImageReadError(f"unsupported pixel type {array.dtype}")


def normalise_layout(array: np.ndarray) -> np.ndarray:
    """Return ``(H, W, 1)`` or ``(H, W, 3)``; drops alpha, collapses colour-less RGB is NOT done.

    An RGB file whose three channels are equal stays RGB: the channel count is a property of the
    product's camera, and the model checks it.
    """
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[2] == 1:
        return array
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return array[:, :, :3]
    raise ImageReadError(f"unsupported image shape {array.shape}")


def read_image(path: str | Path) -> np.ndarray:
    """Read ``path`` as ``float32`` RGB or grayscale in ``[0, 1]``, shape ``(H, W, C)``.

    Raises :class:`ImageReadError` naming the file when it is missing, empty or undecodable.
    """
    return to_float(read_pixels(path))


def read_pixels(path: str | Path) -> np.ndarray:
    """:func:`read_image` without the conversion to float for 8- and 16-bit files: uint8 or
    uint16 as stored, RGB or grayscale, shape ``(H, W, C)``. Other pixel types (float, int8,
    int32 TIFFs) come back as :func:`read_image` gives them, float32 in ``[0, 1]``: OpenCV cannot
    resize some of them, and the engine's tile scale table knows only these three types.

    The engine reads this way and converts after resizing (:meth:`Geometry.prepare`): an image
    is shrunk in its 8- or 16-bit form instead of as 4x larger floats, and a large one waits for
    its tiles in a quarter of the memory (figures: docs/anomaly.md, "The same maps as anomalib").
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    data = np.fromfile(str(path), dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        array = _read_with_pillow(path)
    elif array.ndim == 3 and array.shape[2] >= 3:
        # OpenCV decodes colour as BGR(A); the models were trained on RGB.
        if array.dtype in (np.uint8, np.uint16, np.float32):
            code = cv2.COLOR_BGRA2RGB if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
            array = cv2.cvtColor(array, code)
        else:  # cvtColor refuses int8/int16/int32/float64 colour
            array = np.ascontiguousarray(array[:, :, 2::-1])
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageReadError(f"{path}: {array.shape[1]}x{array.shape[0]} is larger than supported")
    array = normalise_layout(array)
    if array.dtype not in (np.uint8, np.uint16):
        array = to_float(array)
    return array


def _read_with_pillow(path: Path) -> np.ndarray:
    """Fallback decoder for formats OpenCV lacks; raises ImageReadError on failure."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img)
                if array.size and (array.min() < 0 or array.max() > 65535):
                    raise ImageReadError(
                        f"{path}: 32-bit integer pixels outside 0-65535 are not supported"
                    )
                return array.astype(np.uint16)
            if img.mode not in ("L", "RGB", "RGBA"):
                img = img.convert("RGB")
            return np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from exc


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Replicate a single channel to three; the backbones all take RGB."""
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image


def specular_mask(image: np.ndarray, v_min: float = 240, s_max: float = 30) -> np.ndarray:
    """Boolean mask of specular highlights: HSV value > ``v_min`` and saturation < ``s_max``.

    Thresholds are on the 0..255 scale whatever the bit depth. For grayscale images saturation
    is zero, so the mask is simply "very bright". ``image`` is a :func:`read_image` float image
    or a :func:`read_pixels` one.
    """
    rgb = to_rgb(image)
    if rgb.dtype == np.uint8:
        rgb8 = rgb
    elif rgb.dtype == np.uint16:
        rgb8 = (rgb // 257).astype(np.uint8)  # the same 8-bit value as via float, exactly
    else:
        rgb8 = np.clip(to_float(rgb) * 255.0, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(rgb8, cv2.COLOR_RGB2HSV)
    return (hsv[:, :, 2] > v_min) & (hsv[:, :, 1] < s_max)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an ``(H, W, C)`` float image, area-averaging when shrinking (no aliasing)."""
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if height * width < h * w else cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interp)
    if out.ndim == 2:
        out = out[:, :, None]
    return out


#: short side of the copy the shading is estimated on: shading is smooth, so a small copy
#: gives the same blur as the full image in a fraction of the time
SHADING_SIDE = 128
#: the corrected image's grey levels: mean and standard deviation, as a fraction of full scale
SHADING_MEAN, SHADING_SD = 0.45, 0.15


def correct_shading(image: np.ndarray, sigma: float) -> np.ndarray:
    """Flat-field (shading) correction: ``image`` divided by its own Gaussian-blurred brightness,
    then its grey levels set to one mean and contrast, returned in its own pixel type.

    ``sigma`` is the blur's standard deviation as a fraction of the image's shorter side: wider
    than a defect, narrower than the part. What it removes: each photo's lighting (one setup
    brighter than another, a gradient across the part) and its overall brightness and contrast.
    What it keeps: everything smaller than the blur, and colour ratios (every channel is divided
    by the same brightness). ``sigma <= 0`` returns ``image`` unchanged. docs/anomaly.md
    ("Shading correction") has the measurements.
    """
    if sigma <= 0:
        return image
    values = to_float(image)  # a new array: divided in place below (one float copy at most)
    h, w = values.shape[:2]
    brightness = values.mean(axis=2) if values.shape[2] > 1 else values[:, :, 0]
    shrink = min(1.0, SHADING_SIDE / min(h, w))
    small = cv2.resize(
        brightness,
        (max(1, round(w * shrink)), max(1, round(h * shrink))),
        interpolation=cv2.INTER_AREA,
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma * min(small.shape), borderType=cv2.BORDER_REFLECT)
    shading = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) + 0.02
    flat = np.divide(values, shading[:, :, None], out=values)
    mean, sd = (float(v[0, 0]) for v in cv2.meanStdDev(flat.reshape(-1, 1)))
    gain = SHADING_SD / max(sd, 1e-6)
    offset = SHADING_MEAN - mean * gain
    if image.dtype == np.uint8:  # one pass: scale, round and clip to 0..255
        out = cv2.addWeighted(flat, 255.0 * gain, flat, 0.0, 255.0 * offset, dtype=cv2.CV_8U)
        return out.reshape(image.shape)  # cv2 drops a single channel's axis
    flat = np.clip(flat * gain + offset, 0.0, 1.0, out=flat)
    if image.dtype == np.uint16:
        return (flat * 65535.0 + 0.5).astype(np.uint16)
    return flat
