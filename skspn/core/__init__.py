"""TensorFlow core of skspn: leaves, sums, products, scopes, the network and learning.

This package knows nothing of scikit-learn; the estimators in ``skspn.estimators`` use it
through ``network.DGCSPN`` and ``learning``.
"""

import os as _os

# TensorFlow's C++ start-up banners (oneDNN notices, CUDA probing) are not the user's
# concern; Python warnings are left alone.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    import tensorflow as _tf  # noqa: F401
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
