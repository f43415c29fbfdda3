"""Minimal dependency-free PNG output (numpy + zlib + struct) for figures and examples."""

import math
import os
import struct
import zlib

import numpy as np

__all__ = ["write_png", "tile_images"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag, payload):
    body = tag + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png(path, image):
    """Write an 8-bit grayscale or RGB image as a PNG file.

    Parameters
    ----------
    path : str or path-like
        Output file; parent folders must exist.
    image : ndarray of uint8, shape (H, W) or (H, W, 3)
        Grayscale (colour type 0) or RGB (colour type 2) pixels. Other dtypes are rejected;
        convert first (e.g. with :func:`tile_images`, which returns uint8).

    Notes
    -----
    Rows use filter type 0 (none) and are compressed with zlib level 9; no ancillary chunks are
    written.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"write_png expects a uint8 array, got dtype {image.dtype}")
    if image.ndim == 2:
        colour_type = 0
    elif image.ndim == 3 and image.shape[2] == 3:
        colour_type = 2
    else:
        raise ValueError(f"expected shape (H, W) or (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"image must be non-empty, got shape {image.shape}")
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    with open(os.fspath(path), "wb") as fh:
        fh.write(PNG_SIGNATURE)
        fh.write(_chunk(b"IHDR", ihdr))
        fh.write(_chunk(b"IDAT", zlib.compress(raw, 9)))
        fh.write(_chunk(b"IEND", b""))


def tile_images(images, n_cols, pad=1, pad_value=255):
    """Arrange a stack of grayscale images into one uint8 mosaic.

    Parameters
    ----------
    images : array-like, shape (n, h, w)
        Images of a common size. uint8 input is used as is. Float (or other numeric) input is
        taken to be on the 0..255 scale already (multiply [0, 1] data by 255 first): values are
        rounded and clipped to [0, 255]. NaN pixels are drawn as mid-grey 128 so that masked /
        missing pixels are visible.
    n_cols : int
        Number of images per row; the number of rows is ``ceil(n / n_cols)``. Unused cells in
        the last row are filled with ``pad_value``.
    pad : int, default=1
        Pixels of padding between cells and around the border.
    pad_value : int, default=255
        Grey level (0..255) of the padding.

    Returns
    -------
    mosaic : ndarray of uint8, shape (rows * (h + pad) + pad, n_cols * (w + pad) + pad)
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected a stack of shape (n, h, w), got {images.shape}")
    n, h, w = images.shape
    if n == 0:
        raise ValueError("images is empty")
    n_cols = int(n_cols)
    if n_cols < 1:
        raise ValueError(f"n_cols must be >= 1, got {n_cols}")
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if not 0 <= int(pad_value) <= 255:
        raise ValueError(f"pad_value must be in 0..255, got {pad_value}")

    if images.dtype == np.uint8:
        pixels = images
    else:
        values = images.astype(np.float64)
        nan = np.isnan(values)
        values = np.clip(np.rint(np.where(nan, 128.0, values)), 0, 255)
        pixels = values.astype(np.uint8)

    n_rows = math.ceil(n / n_cols)
    mosaic = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad), int(pad_value),
                     dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, n_cols)
        top = pad + r * (h + pad)
        left = pad + c * (w + pad)
        mosaic[top:top + h, left:left + w] = pixels[k]
    return mosaic
