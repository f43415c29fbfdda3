"""scikit-learn estimators over the DGC-SPN core."""

from .density import DGCSPNDensityEstimator
from .imputer import DGCSPNImputer

__all__ = ["DGCSPNDensityEstimator", "DGCSPNImputer"]
