"""Loaders for the offline image datasets used by skspn (MNIST, Fashion-MNIST, Olivetti).

Nothing is ever downloaded. The files are read from a local folder, resolved in this order:

1. the ``data_home`` argument,
2. the ``SKSPN_DATA`` environment variable,
3. ``~/.cache/skspn``.

The expected layout is::

    <data_home>/mnist/train-images-idx3-ubyte.gz
    <data_home>/mnist/train-labels-idx1-ubyte.gz
    <data_home>/mnist/t10k-images-idx3-ubyte.gz
    <data_home>/mnist/t10k-labels-idx1-ubyte.gz
    <data_home>/fashion-mnist/  (the same four file names)
    <data_home>/olivetti/olivetti_faces.npz

Every file's SHA-256 is checked against a constant in this module before it is parsed (once per
file per process).

This module only uses numpy, the standard library and ``sklearn.utils.Bunch``; it does not import
TensorFlow.
"""

import gzip
import hashlib
import os
import struct
import threading

import numpy as np
from sklearn.utils import Bunch

__all__ = ["get_data_home", "load_mnist", "load_fashion_mnist", "load_olivetti"]

_ENV_VAR = "SKSPN_DATA"
_DEFAULT_HOME = os.path.join("~", ".cache", "skspn")

_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "train-labels-idx1-ubyte.gz":
        "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    "t10k-images-idx3-ubyte.gz":
        "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    "t10k-labels-idx1-ubyte.gz":
        "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
}

_FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz":
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz":
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz":
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

_OLIVETTI_SHA256 = {
    "olivetti_faces.npz":
        "1bc306c8729a0170c186c82adbabe9ca9b4f3a5bd8a01f37278c167a9f8e6404",
}

_LAYOUT = """\
  <data_home>/mnist/{train,t10k}-images-idx3-ubyte.gz
  <data_home>/mnist/{train,t10k}-labels-idx1-ubyte.gz
  <data_home>/fashion-mnist/{train,t10k}-images-idx3-ubyte.gz
  <data_home>/fashion-mnist/{train,t10k}-labels-idx1-ubyte.gz
  <data_home>/olivetti/olivetti_faces.npz"""

# Absolute, normalised paths whose SHA-256 has already been checked in this process, keyed with
# the file's size and mtime so that a file replaced on disk is checked again.
_VERIFIED = set()
_VERIFIED_LOCK = threading.Lock()

_SUBSETS = ("train", "test", "all")

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def get_data_home(data_home=None):
    """Return the folder the dataset loaders read from.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Explicit folder. When None, the ``SKSPN_DATA`` environment variable is used if set and
        non-empty, else ``~/.cache/skspn``.

    Returns
    -------
    data_home : str
        Absolute path with ``~`` expanded. The folder is not created and may not exist.
    """
    if data_home is None:
        data_home = os.environ.get(_ENV_VAR) or _DEFAULT_HOME
    if not isinstance(data_home, (str, os.PathLike)) or isinstance(
            os.fspath(data_home), bytes) or not os.fspath(data_home):
        raise ValueError(f"data_home must be a non-empty str or os.PathLike folder, got "
                         f"{data_home!r}")
    return os.path.abspath(os.path.expanduser(os.fspath(data_home)))


def _sha256(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checked_path(data_home, folder, filename, checksums):
    """Return the path of ``<data_home>/<folder>/<filename>`` after checking its SHA-256."""
    path = os.path.join(data_home, folder, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Dataset file not found: {path}\n"
            f"skspn never downloads data; it reads local files from the data folder "
            f"{data_home!r}, laid out as:\n{_LAYOUT}\n"
            f"Pass data_home=... to the loader, or point the {_ENV_VAR} environment variable at "
            f"the folder that contains 'mnist/', 'fashion-mnist/' and 'olivetti/' "
            f"(e.g. export {_ENV_VAR}=/path/to/data)."
        )
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return path
    expected = checksums[filename]
    actual = _sha256(path)
    if actual != expected:
        raise ValueError(
            f"SHA-256 checksum mismatch for {path}: expected {expected}, got {actual}. "
            f"The file is corrupted or is not the expected version; replace it with a good copy."
        )
    with _VERIFIED_LOCK:
        _VERIFIED.add(key)
    return path


def _read_idx(path):
    """Parse a gzip-compressed IDX file into a numpy array (native byte order)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4:
        raise ValueError(f"{path} is too short to be an IDX file")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path} has a bad IDX magic number 0x{raw[:4].hex()} "
            f"(expected 0x0000 followed by a type code and a dimension count)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header_len])
    dtype = _IDX_DTYPES[type_code]
    count = int(np.prod(dims, dtype=np.int64))
    expected_len = header_len + count * dtype.itemsize
    if len(raw) != expected_len:
        raise ValueError(
            f"{path}: IDX payload has {len(raw)} bytes, header {dims} implies {expected_len}"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _check_subset(subset):
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be one of {_SUBSETS}, got {subset!r}")


def _load_idx_dataset(folder, checksums, data_home, subset, return_X_y, name, descr):
    _check_subset(subset)
    if isinstance(data_home, str) and data_home in _SUBSETS and not os.path.isdir(data_home):
        # load_mnist("test"): data_home comes first, as in scikit-learn's fetchers.
        raise ValueError(f"data_home={data_home!r} is not a folder; to load the "
                         f"{data_home!r} subset, pass subset={data_home!r}")
    home = get_data_home(data_home)
    prefixes = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[subset]
    images, labels = [], []
    for prefix in prefixes:
        img_path = _checked_path(home, folder, f"{prefix}-images-idx3-ubyte.gz", checksums)
        lab_path = _checked_path(home, folder, f"{prefix}-labels-idx1-ubyte.gz", checksums)
        img = _read_idx(img_path)
        lab = _read_idx(lab_path)
        if img.ndim != 3 or lab.ndim != 1 or img.shape[0] != lab.shape[0]:
            raise ValueError(
                f"{name}: unexpected shapes {img.shape} (images) and {lab.shape} (labels)"
            )
        images.append(img)
        labels.append(lab)
    images = np.concatenate(images) if len(images) > 1 else images[0]
    target = np.concatenate(labels) if len(labels) > 1 else labels[0]
    images = images.astype(np.uint8, copy=False)
    target = target.astype(np.uint8, copy=False)
    data = images.reshape(images.shape[0], -1)
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        images=images,
        target=target,
        image_shape=tuple(images.shape[1:]),
        subset=subset,
        DESCR=descr,
    )


_MNIST_DESCR = (
    "MNIST handwritten digits (LeCun, Cortes and Burges): 60000 training and 10000 test "
    "grey-scale images of 28x28 pixels with labels 0..9. `images` is (n, 28, 28) uint8 in "
    "[0, 255], `data` is the same pixels flattened row-major to (n, 784) uint8 (no scaling), "
    "and `target` is the uint8 digit label. subset='all' stacks the training set followed by "
    "the test set. Read from local gzip-compressed IDX files whose SHA-256 was checked."
)

_FASHION_DESCR = (
    "Fashion-MNIST (Zalando Research, MIT licence): 60000 training and 10000 test grey-scale "
    "images of 28x28 pixels of clothing in 10 classes (0 T-shirt/top, 1 Trouser, 2 Pullover, "
    "3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot). `images` is "
    "(n, 28, 28) uint8 in [0, 255], `data` is the same pixels flattened row-major to (n, 784) "
    "uint8 (no scaling), and `target` is the uint8 class label. subset='all' stacks the "
    "training set followed by the test set. Read from local gzip-compressed IDX files whose "
    "SHA-256 was checked."
)

_OLIVETTI_DESCR = (
    "Olivetti faces (ORL/AT&T Laboratories Cambridge, 64x64 version by Sam Roweis): 400 upright "
    "grey-scale face images of 64x64 pixels, 10 images each of 40 people, with no fixed "
    "train/test split (Poon & Domingos 2011 test on the last 50, indices 350..399). `images` "
    "is (400, 64, 64) uint8 and `data` is the same pixels flattened row-major to (400, 4096) "
    "uint8, both in the file's raw 0..255 scale (observed values 0..242) -- NOT the [0, 1] "
    "floats of sklearn.datasets.fetch_olivetti_faces, which divides by the maximum. `target` "
    "is the uint8 person id 0..39 stored in the file (equal to index // 10). Read from a local "
    "npz file whose SHA-256 was checked."
)


def load_mnist(data_home=None, subset="train", return_X_y=False):
    """Load MNIST from local files.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder containing ``mnist/``. Defaults to ``$SKSPN_DATA``, then ``~/.cache/skspn``.
    subset : {'train', 'test', 'all'}, default='train'
        Which split to return; 'all' is the training set followed by the test set.
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    dataset : sklearn.utils.Bunch
        With fields ``data`` (n, 784) uint8, ``images`` (n, 28, 28) uint8, ``target`` (n,)
        uint8, ``image_shape`` ``(28, 28)``, ``subset`` and ``DESCR``. ``data`` and
        ``images`` are views of the same pixels (an edit of one shows in the other).
    (data, target) : tuple of ndarray
        If ``return_X_y`` is True.

    Raises
    ------
    FileNotFoundError
        If a file is missing; the message gives the expected layout.
    ValueError
        If ``subset`` is invalid, a file fails its SHA-256 check, or is not a valid IDX file.

    Examples
    --------
    uint8 pixels cannot hold NaN: hide pixels on a float copy.

    >>> from skspn.datasets import load_mnist
    >>> X = load_mnist(subset="test").data.astype(float)  # doctest: +SKIP
    >>> X[:, 392:] = float("nan")  # bottom half missing  # doctest: +SKIP
    """
    return _load_idx_dataset("mnist", _MNIST_SHA256, data_home, subset, return_X_y,
                             "MNIST", _MNIST_DESCR)


def load_fashion_mnist(data_home=None, subset="train", return_X_y=False):
    """Load Fashion-MNIST from local files.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder containing ``fashion-mnist/``. Defaults to ``$SKSPN_DATA``, then
        ``~/.cache/skspn``.
    subset : {'train', 'test', 'all'}, default='train'
        Which split to return; 'all' is the training set followed by the test set.
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    dataset : sklearn.utils.Bunch
        With fields ``data`` (n, 784) uint8, ``images`` (n, 28, 28) uint8, ``target`` (n,)
        uint8, ``image_shape`` ``(28, 28)``, ``subset`` and ``DESCR``; ``data`` and
        ``images`` are views of the same pixels. Cast to float before setting NaN.
    (data, target) : tuple of ndarray
        If ``return_X_y`` is True.

    Raises
    ------
    FileNotFoundError
        If a file is missing; the message gives the expected layout.
    ValueError
        If ``subset`` is invalid, a file fails its SHA-256 check, or is not a valid IDX file.
    """
    return _load_idx_dataset("fashion-mnist", _FASHION_SHA256, data_home, subset, return_X_y,
                             "Fashion-MNIST", _FASHION_DESCR)


def load_olivetti(data_home=None, return_X_y=False):
    """Load the 64x64 Olivetti faces from a local file.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder containing ``olivetti/olivetti_faces.npz``. Defaults to ``$SKSPN_DATA``, then
        ``~/.cache/skspn``.
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    dataset : sklearn.utils.Bunch
        With fields ``data`` (400, 4096) uint8, ``images`` (400, 64, 64) uint8, both on the raw
        0..255 scale (not rescaled to [0, 1]), ``target`` (400,) uint8 person id 0..39,
        ``image_shape`` ``(64, 64)`` and ``DESCR``.
    (data, target) : tuple of ndarray
        If ``return_X_y`` is True.

    Raises
    ------
    FileNotFoundError
        If the file is missing; the message gives the expected layout.
    ValueError
        If the file fails its SHA-256 check or does not hold the expected arrays.
    """
    home = get_data_home(data_home)
    path = _checked_path(home, "olivetti", "olivetti_faces.npz", _OLIVETTI_SHA256)
    with np.load(path, allow_pickle=False) as npz:
        if "images" not in npz.files:
            raise ValueError(f"{path} has no 'images' array (found {npz.files})")
        images = np.asarray(npz["images"])
        target = np.asarray(npz["target"]) if "target" in npz.files else None
    if images.shape != (400, 64, 64):
        raise ValueError(f"{path}: expected images of shape (400, 64, 64), got {images.shape}")
    if target is None:
        # The checked file always has it; kept for clarity: person p owns images 10p..10p+9.
        target = (np.arange(images.shape[0]) // 10).astype(np.uint8)
    data = images.reshape(images.shape[0], -1)
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        images=images,
        target=target,
        image_shape=tuple(images.shape[1:]),
        DESCR=_OLIVETTI_DESCR,
    )
