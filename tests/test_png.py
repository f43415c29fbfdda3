"""Tests for the dependency-free PNG writer and image tiling helper."""

import struct
import zlib

import numpy as np
import pytest

from skspn._png import tile_images, write_png


def _read_png(path):
    """Tiny PNG reader for filter-0, 8-bit, non-interlaced files; checks every CRC."""
    blob = open(path, "rb").read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos:pos + 4])
        tag = blob[pos + 4:pos + 8]
        payload = blob[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(tag + payload) & 0xFFFFFFFF, tag
        chunks.append((tag, payload))
        pos += 12 + length
    assert pos == len(blob)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    idat = b"".join(p for t, p in chunks if t == b"IDAT")
    raw = np.frombuffer(zlib.decompress(idat), np.uint8)
    channels = {0: 1, 2: 3}[colour]
    rows = raw.reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()  # filter byte 0 on every row
    pixels = rows[:, 1:].reshape((height, width) if channels == 1 else (height, width, 3))
    return dict(width=width, height=height, depth=depth, colour=colour, comp=comp,
                filt=filt, interlace=interlace, pixels=pixels)


def test_grayscale_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(7, 13), dtype=np.uint8)
    path = tmp_path / "g.png"
    write_png(path, img)
    out = _read_png(path)
    assert (out["width"], out["height"]) == (13, 7)
    assert (out["depth"], out["colour"], out["comp"], out["filt"], out["interlace"]) == \
        (8, 0, 0, 0, 0)
    assert np.array_equal(out["pixels"], img)


def test_rgb_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    path = tmp_path / "c.png"
    write_png(str(path), img)
    out = _read_png(path)
    assert (out["width"], out["height"], out["depth"], out["colour"]) == (4, 5, 8, 2)
    assert np.array_equal(out["pixels"], img)


def test_non_contiguous_input(tmp_path):
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)[:, ::2]
    write_png(tmp_path / "nc.png", img)
    assert np.array_equal(_read_png(tmp_path / "nc.png")["pixels"], img)


def test_write_png_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError):
        write_png(tmp_path / "x.png", np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", np.zeros((3, 3, 4), np.uint8))
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", np.zeros((0, 3), np.uint8))


def test_tile_images_layout():
    imgs = np.stack([np.full((2, 3), k, np.uint8) for k in range(5)])
    m = tile_images(imgs, n_cols=3, pad=1, pad_value=255)
    assert m.dtype == np.uint8 and m.shape == (2 * 3 + 1, 3 * 4 + 1)
    assert (m[0] == 255).all() and (m[:, 0] == 255).all()
    assert (m[1:3, 1:4] == 0).all() and (m[1:3, 5:8] == 1).all() and (m[1:3, 9:12] == 2).all()
    assert (m[4:6, 1:4] == 3).all() and (m[4:6, 5:8] == 4).all()
    assert (m[4:6, 9:12] == 255).all()  # empty cell
    assert tile_images(imgs, n_cols=5, pad=0).shape == (2, 15)


def test_tile_images_float_and_nan(tmp_path):
    imgs = np.array([[[-5.0, 0.4, 254.6, 300.0], [np.nan, 10.0, 127.5, 255.0]]])
    m = tile_images(imgs, n_cols=1, pad=0)
    assert m.tolist() == [[0, 0, 255, 255], [128, 10, 128, 255]]
    write_png(tmp_path / "t.png", m)
    assert np.array_equal(_read_png(tmp_path / "t.png")["pixels"], m)
