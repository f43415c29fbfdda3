"""skspn: Deep Generalized Convolutional Sum-Product Networks as scikit-learn estimators."""

__version__ = "0.1.0"
