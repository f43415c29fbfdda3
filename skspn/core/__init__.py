"""TensorFlow core of skspn: leaves, sums, products, scopes, the network and learning.

This package knows nothing of scikit-learn. The estimators in ``skspn.estimators`` build
networks from ``leaves``, ``scopes`` and ``network``, train and query them through
``learning`` and place them with ``distribute``; nothing here imports them.
"""

import os as _os
import re as _re
import sys as _sys
import tempfile as _tempfile

# TensorFlow's C++ log lines (start-up banners, oneDNN fallback notices) are not the
# user's concern: TF_CPP_MIN_LOG_LEVEL=3 unless the user set it. It
# silences most of them, but the oneDNN and CPU-feature notices are written before
# TensorFlow reads it, so the import runs with the C-level stderr captured and everything
# except those known banners is passed on (Python warnings from the import included).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_BANNER = _re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|I0000 .*\] (oneDNN custom operations are on|This TensorFlow binary is optimized)"
    r"|To enable the following instructions:)")


def _import_tensorflow():
    if "tensorflow" in _sys.modules:
        return _sys.modules["tensorflow"]
    try:
        _sys.stderr.flush()
        saved = _os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (e.g. embedded interpreters)
        import tensorflow

        return tensorflow
    with _tempfile.TemporaryFile(mode="w+b") as capture:
        _os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
        finally:
            _sys.stderr.flush()
            _os.dup2(saved, 2)
            _os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(True)
                    if not _BANNER.match(line)]
            if kept:
                _sys.stderr.write("".join(kept))
    return tensorflow


try:
    _tf = _import_tensorflow()
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "skspn needs TensorFlow. Install it with one of the extras: "
        "pip install 'skspn[cpu]' (CPU build) or pip install 'skspn[gpu]' (CUDA build)"
    ) from exc

from .leaves import BernoulliLeaf, CategoricalLeaf, NormalLeaf  # noqa: E402
from .network import DGCSPN  # noqa: E402
from .scopes import ProductSpec, plan_products, product_spec, resolve  # noqa: E402

__all__ = ["DGCSPN", "NormalLeaf", "BernoulliLeaf", "CategoricalLeaf", "ProductSpec",
           "plan_products", "product_spec", "resolve"]
