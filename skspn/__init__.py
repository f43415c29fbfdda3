"""skspn: Deep Generalized Convolutional Sum-Product Networks as scikit-learn estimators.

``DGCSPNClassifier``, ``DGCSPNDensityEstimator`` and ``DGCSPNImputer`` follow the
scikit-learn API (``fit``, ``predict``, ``score_samples``, ``transform``) over a
TensorFlow DGC-SPN core (``skspn.core``) that knows nothing of scikit-learn.
"""

__version__ = "0.1.0"

from .estimators import DGCSPNClassifier, DGCSPNDensityEstimator, DGCSPNImputer  # noqa: E402

__all__ = ["DGCSPNClassifier", "DGCSPNDensityEstimator", "DGCSPNImputer", "__version__"]
