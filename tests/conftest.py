"""Shared pytest fixtures for the skspn test suite."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    """Split the CPU into 2 logical devices so that the tf.distribute tests can run a
    2-replica MirroredStrategy on any machine. It must happen before TensorFlow
    initialises its devices, hence here; every other test runs on the first device as
    before (nothing is placed by hand)."""
    import skspn.core  # noqa: F401  (imports TensorFlow quietly)
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # devices already initialised (e.g. a plugin used TensorFlow)
        pass


def _find_data_home():
    """Return (path or None, reason) for the real-data folder."""
    env = os.environ.get("SKSPN_DATA")
    if env:
        if os.path.isdir(env):
            return env, ""
        return None, f"SKSPN_DATA={env!r} is not a directory"
    fallback = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))
    if os.path.isdir(fallback):
        return fallback, ""
    return None, f"SKSPN_DATA is unset and the fallback {fallback} does not exist"


@pytest.fixture(scope="session")
def data_home():
    """Folder holding mnist/, fashion-mnist/ and olivetti/; skips the test if absent."""
    path, reason = _find_data_home()
    if path is None:
        pytest.skip(
            f"real datasets not found ({reason}); set SKSPN_DATA to the folder containing "
            "mnist/, fashion-mnist/ and olivetti/"
        )
    return path


@pytest.fixture(scope="session")
def strategy():
    """One 2-replica ``MirroredStrategy`` for the whole session: strategies created one
    after another in a process number their collective all-reduces alike, and two
    all-reduces of different structures under the same number abort."""
    import tensorflow as tf

    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPU devices (set up by pytest_configure)")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
