"""Request bytes -> RGB pixels, with the caps that keep a hostile request cheap.

Every refusal is a `BadImage` carrying the HTTP status and a one-line reason: an empty body,
a body over the byte cap, bytes that are not an image, an image over the pixel cap (checked
from the header, before any pixel is decoded) and a truncated or corrupt file.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from feddymem.data.images import ImageReadError, to_rgb_array

DEFAULT_MAX_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class BadImage(ValueError):
    """A request's image refused: `status` (4xx) and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_size(n_bytes: int, *, max_bytes: int) -> None:
    """Refuse an empty body or one over `max_bytes`."""
    if n_bytes == 0:
        raise BadImage(
            400, "empty body: send the image file as the request body or a multipart upload"
        )
    if n_bytes > max_bytes:
        raise BadImage(413, f"body over the size cap of {max_bytes} bytes")


def decode_bytes(
    data: bytes, *, max_bytes: int, max_pixels: int, name: str = "upload"
) -> np.ndarray:
    """The image in `data` as (H, W, 3) uint8 RGB, or `BadImage`."""
    check_size(len(data), max_bytes=max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise BadImage(
                        413,
                        f"image of {img.width}x{img.height} px is over the pixel cap of "
                        f"{max_pixels} px",
                    )
                img.load()
                return to_rgb_array(img, name)
    except BadImage:
        raise
    except ImageReadError as err:  # a mode with no RGB conversion
        raise BadImage(415, str(err)) from None
    except Image.DecompressionBombError as err:  # Pillow's own cap, met at open
        raise BadImage(413, f"image over the pixel cap: {err}") from None
    except UnidentifiedImageError:
        raise BadImage(415, "not an image: no image format recognised in the body") from None
    except _DECODE_ERRORS as err:
        raise BadImage(400, f"truncated or corrupt image: {err}") from None
