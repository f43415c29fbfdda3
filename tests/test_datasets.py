"""Tests for skspn.datasets against the real offline data (skipped when it is absent)."""

import gzip
import os
import shutil
import struct
import sys

import numpy as np
import pytest

from skspn import datasets
from skspn.datasets import get_data_home, load_fashion_mnist, load_mnist, load_olivetti

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_module_does_not_import_tensorflow():
    # Load skspn/datasets.py on its own in a fresh interpreter (bypassing skspn/__init__.py,
    # which is allowed to import TensorFlow) and check it pulls in neither TF nor skspn.core.
    import subprocess

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('_ds', {datasets.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')\n"
        "       or m.startswith('skspn.core')]\n"
        "sys.exit('imported: ' + ', '.join(bad) if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_get_data_home_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("SKSPN_DATA", str(tmp_path / "env"))
    assert get_data_home(tmp_path / "arg") == str(tmp_path / "arg")
    assert get_data_home() == str(tmp_path / "env")
    monkeypatch.delenv("SKSPN_DATA")
    assert get_data_home() == os.path.join(os.path.expanduser("~"), ".cache", "skspn")
    assert not (tmp_path / "env").exists()  # nothing is created


@pytest.mark.parametrize("bad", [5, b"/tmp", ""])
def test_bad_data_home_is_named(bad):
    with pytest.raises(ValueError, match="data_home must be a non-empty str"):
        load_mnist(data_home=bad)


def test_mnist_train(data_home):
    b = load_mnist(data_home)
    assert b.data.shape == (60000, 784) and b.data.dtype == np.uint8
    assert b.images.shape == (60000, 28, 28) and b.images.dtype == np.uint8
    assert b.target.shape == (60000,) and b.target.dtype == np.uint8
    assert b.image_shape == (28, 28)
    assert np.array_equal(b.data[123], b.images[123].ravel())
    assert np.bincount(b.target, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert abs(b.data.mean() / 255.0 - 0.1306604762738429) < 1e-9
    assert isinstance(b.DESCR, str) and "MNIST" in b.DESCR


def test_mnist_test_and_all(data_home):
    X, y = load_mnist(data_home, subset="test", return_X_y=True)
    assert X.shape == (10000, 784) and y.shape == (10000,)
    assert np.bincount(y, minlength=10).tolist() == MNIST_TEST_COUNTS
    b = load_mnist(data_home, subset="all")
    assert b.images.shape == (70000, 28, 28)
    assert np.array_equal(b.data[60000:], X) and np.array_equal(b.target[60000:], y)


def test_env_var_is_used(data_home, monkeypatch):
    monkeypatch.setenv("SKSPN_DATA", data_home)
    X, y = load_mnist(subset="test", return_X_y=True)
    assert X.shape == (10000, 784)


def test_fashion_mnist(data_home):
    b = load_fashion_mnist(data_home, subset="train")
    assert b.data.shape == (60000, 784) and b.images.shape == (60000, 28, 28)
    assert b.data.dtype == np.uint8 and b.target.dtype == np.uint8
    assert np.bincount(b.target, minlength=10).tolist() == [6000] * 10
    X, y = load_fashion_mnist(data_home, subset="test", return_X_y=True)
    assert X.shape == (10000, 784) and y.shape == (10000,)
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10


def test_olivetti(data_home):
    b = load_olivetti(data_home)
    assert b.images.shape == (400, 64, 64) and b.images.dtype == np.uint8
    assert b.data.shape == (400, 4096) and b.data.dtype == np.uint8
    assert b.image_shape == (64, 64)
    assert np.array_equal(b.target, np.arange(400) // 10)
    assert b.data.max() == 242
    # scikit-learn normalisation reproduces its published first pixels
    first = b.data[0, :4] / b.data.max()
    np.testing.assert_allclose(first, [0.30991736, 0.3677686, 0.41735536, 0.44214877],
                               rtol=1e-6)
    X, y = load_olivetti(data_home, return_X_y=True)
    assert X.shape == (400, 4096) and y.shape == (400,)


def test_missing_folder_message(tmp_path, monkeypatch):
    monkeypatch.delenv("SKSPN_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as exc:
        load_mnist(tmp_path)
    msg = str(exc.value)
    assert "SKSPN_DATA" in msg
    assert os.path.join(str(tmp_path), "mnist", "train-images-idx3-ubyte.gz") in msg
    assert "fashion-mnist/" in msg and "olivetti_faces.npz" in msg
    with pytest.raises(FileNotFoundError, match="SKSPN_DATA"):
        load_olivetti(tmp_path)
    with pytest.raises(FileNotFoundError, match="SKSPN_DATA"):
        load_fashion_mnist(data_home=tmp_path, subset="test")


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
def test_subset_passed_as_data_home_is_named(loader, tmp_path, monkeypatch):
    # load_mnist("test") reads "test" as data_home (first, as in scikit-learn's fetchers)
    # and reported a missing ./test/mnist/... file.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"pass subset='test'"):
        loader("test")


def test_corrupted_file_raises(data_home, tmp_path):
    src = os.path.join(data_home, "mnist")
    dst = tmp_path / "mnist"
    dst.mkdir()
    shutil.copy(os.path.join(src, "t10k-images-idx3-ubyte.gz"), dst)
    raw = bytearray(open(os.path.join(src, "t10k-labels-idx1-ubyte.gz"), "rb").read())
    raw[len(raw) // 2] ^= 0x01  # one byte changed, same size and name
    (dst / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum") as exc:
        load_mnist(tmp_path, subset="test")
    msg = str(exc.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg
    assert datasets._MNIST_SHA256["t10k-labels-idx1-ubyte.gz"] in msg


def test_verification_is_cached(data_home, monkeypatch):
    load_mnist(data_home, subset="test")  # verified (maybe already earlier)
    calls = []
    real = datasets._sha256
    monkeypatch.setattr(datasets, "_sha256", lambda p: calls.append(p) or real(p))
    load_mnist(data_home, subset="test")
    assert calls == []


@pytest.mark.parametrize("subset", ["validation", "Train", None, ""])
def test_bad_subset(subset, tmp_path):
    with pytest.raises(ValueError, match="subset"):
        load_mnist(tmp_path, subset=subset)
    with pytest.raises(ValueError, match="subset"):
        load_fashion_mnist(tmp_path, subset=subset)


def test_idx_parser(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 2, 3, 4) + arr.tobytes())
    out = datasets._read_idx(str(good))
    assert out.dtype == np.uint8 and np.array_equal(out, arr)

    ints = np.array([1, -2, 70000], dtype=">i4")
    big = tmp_path / "int.gz"
    with gzip.open(big, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x0C, 1) + struct.pack(">I", 3) + ints.tobytes())
    assert datasets._read_idx(str(big)).tolist() == [1, -2, 70000]

    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x12\x34\x08\x03" + struct.pack(">III", 2, 3, 4) + arr.tobytes())
    with pytest.raises(ValueError, match="magic"):
        datasets._read_idx(str(bad))

    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as fh:
        header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 2, 3, 4)
        fh.write(header + arr.tobytes()[:-1])
    with pytest.raises(ValueError, match="bytes"):
        datasets._read_idx(str(short))
