"""Shared pytest fixtures for the skspn test suite."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
