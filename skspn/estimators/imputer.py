"""``DGCSPNImputer``: inpainting / missing-value imputation with a generative DGC-SPN."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import StrOptions

from .density import GenerativeDGCSPN


class DGCSPNImputer(OneToOneFeatureMixin, TransformerMixin, GenerativeDGCSPN):
    """Impute missing values with a Deep Generalized Convolutional Sum-Product Network.

    The network is fitted on ``X`` with its missing entries marginalised (training on
    incomplete data works); ``transform`` replaces each missing entry by its completion
    given the observed entries of the same row. Observed entries are returned unchanged.
    Defaults follow the paper's inpainting set-up (per-image standardisation, hard EM with
    unweighted sum inputs), except that the EM update is per epoch (batch EM), which
    measured better than the paper's online update (see ``em_update``).

    Parameters
    ----------
    missing_values : float, int or np.nan, default=np.nan
        The placeholder for missing values; all its occurrences are imputed.
    completion : {'marginal', 'mpe'}, default='marginal'
        ``'marginal'``: posterior-weighted component modes (the paper's inpainting);
        ``'mpe'``: the max-product (MPE) completion.
    standardize : {'sample', 'feature'} or None, default='sample'
        Per-image standardisation from the observed entries (as the paper), per-feature,
        or none. When large regions are missing (half an image), ``'sample'`` estimates
        each image's statistics from the observed part alone, which scales it differently
        from the complete training images; ``'feature'`` scales it exactly as in training.
        In the inpainting benchmark (``benchmarks/README.md``) ``'feature'`` completed the
        Olivetti faces better, MNIST about as well and Fashion-MNIST better on bottom
        halves but worse on left halves.
    **other parameters
        As ``DGCSPNDensityEstimator``: ``image_shape``, ``depth``, ``sum_channels``,
        ``n_components``, ``leaf``, ``kernel_size``, ``first_product``,
        ``n_nonoverlapping``, ``learning``, ``em_update``, ``max_epochs``, ``batch_size``,
        ``learning_rate``, ``tol``, ``leaf_scale``, ``random_state``, ``verbose``.

    Attributes
    ----------
    image_shape_, n_features_in_, feature_names_in_, history_, n_iter_, converged_,
    network_weights_ : see ``DGCSPNDensityEstimator``.

    Notes
    -----
    Fitted inside a ``tf.distribute`` strategy's scope it trains data-parallel, as
    ``DGCSPNDensityEstimator`` does (see its notes).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_digits
    >>> from skspn import DGCSPNImputer
    >>> X = load_digits().data
    >>> X_missing = X.copy(); X_missing[:, 32:] = np.nan
    >>> imp = DGCSPNImputer(max_epochs=2, random_state=0).fit(X)
    >>> imp.transform(X_missing[:2]).shape
    (2, 64)
    """

    _parameter_constraints: dict = {
        **GenerativeDGCSPN._parameter_constraints,
        "missing_values": [numbers.Real, None],
        "completion": [StrOptions({"marginal", "mpe"})],
    }

    def __init__(self, *, missing_values=np.nan, completion="marginal", image_shape=None,
                 depth="auto", sum_channels=16, n_components=4, leaf="normal", kernel_size=2,
                 first_product="one_hot", n_nonoverlapping=0, learning="hard_em_unweighted",
                 em_update="epoch", max_epochs=15, batch_size=128, learning_rate=1e-2, tol=0.1,
                 standardize="sample", leaf_scale=1.0, random_state=None, verbose=0):
        super().__init__(image_shape=image_shape, depth=depth, sum_channels=sum_channels,
                         n_components=n_components, leaf=leaf, kernel_size=kernel_size,
                         first_product=first_product, n_nonoverlapping=n_nonoverlapping,
                         learning=learning, em_update=em_update, max_epochs=max_epochs,
                         batch_size=batch_size,
                         learning_rate=learning_rate, tol=tol, standardize=standardize,
                         leaf_scale=leaf_scale, random_state=random_state, verbose=verbose)
        self.missing_values = missing_values
        self.completion = completion

    def _with_nan(self, X):
        """Replace ``missing_values`` by NaN (the core's marker of a missing entry)."""
        if self.missing_values is None or (isinstance(self.missing_values, float)
                                           and np.isnan(self.missing_values)):
            return X
        if hasattr(X, "columns"):
            return X.mask(X == self.missing_values)
        X = np.array(X, dtype=np.float64)
        X[X == self.missing_values] = np.nan
        return X

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the imputer on ``X`` (missing entries marginalised).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])
        y : Ignored

        Returns
        -------
        self
        """
        return GenerativeDGCSPN.fit.__wrapped__(self, self._with_nan(X))

    def transform(self, X):
        """Impute all missing entries of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])

        Returns
        -------
        X_imputed : ndarray of the same shape as ``X``
        """
        return self.impute(self._with_nan(X), method=self.completion, random_state=0)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags
