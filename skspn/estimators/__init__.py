"""scikit-learn estimators over the DGC-SPN core."""

from .classifier import DGCSPNClassifier
from .density import DGCSPNDensityEstimator
from .imputer import DGCSPNImputer

__all__ = ["DGCSPNClassifier", "DGCSPNDensityEstimator", "DGCSPNImputer"]
