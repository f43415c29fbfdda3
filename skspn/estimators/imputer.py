"""``DGCSPNImputer``: inpainting / missing-value imputation with a generative DGC-SPN."""

from __future__ import annotations

import numbers
from numbers import Integral

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp, softmax
from sklearn.base import OneToOneFeatureMixin, TransformerMixin, _fit_context, clone
from sklearn.impute import MissingIndicator
from sklearn.utils import check_array, check_random_state
from sklearn.utils._missing import is_pandas_na, is_scalar_nan
from sklearn.utils._param_validation import Interval, MissingValues, StrOptions
from sklearn.utils._set_output import _get_output_config

from ._base import _is_unfitted, _unfitted_if_it_fails
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
    missing_values : float, int, np.nan, pd.NA or None, default=np.nan
        The placeholder for missing values: ``transform`` imputes all its occurrences,
        ``score_samples`` and ``score`` marginalise them. ``pd.NA`` and None mean the same
        as NaN (pandas' nullable columns arrive as NaN; ``inverse_transform`` puts NaN
        back). With any other value than these, NaN in ``X`` is an error (as in
        ``sklearn.impute``). ``impute`` always takes NaN as its marker.
    completion : {'marginal', 'mpe'}, default='marginal'
        ``'marginal'``: posterior-weighted component modes (the paper's inpainting);
        ``'mpe'``: the max-product (MPE) completion (see ``impute``; approximate: not
        always the most probable completion).
    standardize : {'sample', 'feature'} or None, default='sample'
        Per-image standardisation from the observed entries (as the paper), per-feature,
        or none. ``'sample'`` suits images, whose pixels share one unit; for tabular
        data with columns in different units use ``'feature'`` (a fit with ``'sample'``
        warns when a quarter of the features vary over 100 times less than the most
        varying one).
        When large regions are missing (half an image), ``'sample'`` estimates
        each image's statistics from the observed part alone, which scales it differently
        from the complete training images; ``'feature'`` scales it exactly as in training.
        In the inpainting benchmark (``benchmarks/README.md``) ``'feature'`` completed the
        Olivetti faces better, MNIST about as well and Fashion-MNIST better on bottom
        halves but worse on left halves. The statistics of ``'sample'`` (the training rows'
        typical mean and scale, for rows that cannot be scaled by their own values) are
        fitted with every setting, so a ``set_params`` after ``fit`` to ``'sample'`` or None
        acts at the next query (None for images the caller standardised); ``'feature'``
        needs a fit with ``'feature'``.
    min_value, max_value : float or array-like of shape (n_features,), default=-inf / inf
        Bounds of the imputed values, one for all features or one per feature, as in
        ``IterativeImputer`` (e.g. 0 and 255 for 8-bit pixels: the completions of a
        Normal-leaf model, with per-image scaling most of all, can leave the data's range).
        Observed values are never changed; ``impute`` applies them too, ``sample`` does
        not (with ``standardize='sample'`` it draws standardised images).
    add_indicator : bool, default=False
        Append to the output of ``transform`` one 0/1 column per feature that had missing
        entries in training (``MissingIndicator``'s ``features='missing-only'``), as
        scikit-learn's imputers do; a feature missing only at transform time gets none.
        The output is then 2-D, ``(n_samples, n_features + n_indicator_features)``, image
        arrays included, and ``inverse_transform`` puts ``missing_values`` back. Every fit
        remembers the missing features, so it can be set after fit too.
    n_networks : int, default=1
        Number of networks, fitted independently on all of ``X`` with different random
        states. Together they are the uniform mixture of their distributions:
        ``score_samples`` is its exact log-density and ``sample`` (and
        ``impute(method='sample')``) draw from it exactly. The ``'marginal'`` completion
        is the average of the networks' completions (as in bagging), not the posterior
        mean of the mixture, which weights each network by its likelihood of the observed
        entries: the plain average completed half-masked images better in every run of
        ``benchmarks/inpainting.py`` but one (e.g. MNIST bottom / left halves, 1000
        training images: one network MSE 3865 / 3285, the average of 8 networks
        3435 / 2803, their posterior mean 3562 / 2998; the exception, Olivetti with 8
        networks of variant B~: 1096 / 1084 against 1080 / 1083). With discrete leaves
        it is the most probable value of the average of the networks' posterior marginals
        (codes are not averaged). The ``'mpe'`` completion is the MPE completion of the
        network most probable given the observed entries. Fitting and queries cost
        ``n_networks`` times as much.
    **other parameters
        As ``DGCSPNDensityEstimator``: ``image_shape``, ``depth``, ``sum_channels``,
        ``n_components``, ``leaf``, ``n_categories``, ``kernel_size``, ``first_product``,
        ``n_nonoverlapping``, ``learning``, ``em_update``, ``max_epochs``, ``batch_size``,
        ``learning_rate``, ``tol``, ``leaf_scale``, ``random_state``, ``verbose``.

    Attributes
    ----------
    image_shape_, n_features_in_, feature_names_in_, network_weights_, seed_, n_categories_ :
        See ``DGCSPNDensityEstimator`` (``network_weights_`` and ``seed_`` only when
        ``n_networks=1``).
    feature_mean_, feature_scale_, typical_mean_, typical_scale_ :
        Standardisation statistics, see ``DGCSPNDensityEstimator``.
    history_ : list of float
        Train log-likelihood per epoch; with ``n_networks > 1``, the mean over the
        networks (a network that stopped early counts with its last value).
    n_iter_ : int
        Epochs run (the most of any network).
    converged_ : bool
        Whether training stopped by ``tol`` (for every network).
    estimators_ : list of DGCSPNImputer
        With ``n_networks > 1``: the fitted single-network imputers.
    indicator_ : MissingIndicator or None
        Fitted with ``add_indicator=True``: the indicator of the features missing in
        training (``indicator_.features_``; over all ``partial_fit`` calls), else None.

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
        "missing_values": [MissingValues(numeric_only=True), None],
        "completion": [StrOptions({"marginal", "mpe"})],
        "n_networks": [Interval(Integral, 1, None, closed="left")],
        "min_value": [None, numbers.Real, "array-like"],
        "max_value": [None, numbers.Real, "array-like"],
        "add_indicator": ["boolean"],
    }

    def __init__(self, *, missing_values=np.nan, completion="marginal", n_networks=1,
                 min_value=-np.inf, max_value=np.inf, add_indicator=False, image_shape=None,
                 depth="auto", sum_channels=16, n_components=4, leaf="normal",
                 n_categories=None, kernel_size=2,
                 first_product="one_hot", n_nonoverlapping=0, learning="hard_em_unweighted",
                 em_update="epoch", max_epochs=15, batch_size=128, learning_rate=1e-2, tol=0.1,
                 standardize="sample", leaf_scale=1.0, random_state=None, verbose=0):
        super().__init__(image_shape=image_shape, depth=depth, sum_channels=sum_channels,
                         n_components=n_components, leaf=leaf, n_categories=n_categories,
                         kernel_size=kernel_size,
                         first_product=first_product, n_nonoverlapping=n_nonoverlapping,
                         learning=learning, em_update=em_update, max_epochs=max_epochs,
                         batch_size=batch_size,
                         learning_rate=learning_rate, tol=tol, standardize=standardize,
                         leaf_scale=leaf_scale, random_state=random_state, verbose=verbose)
        self.missing_values = missing_values
        self.completion = completion
        self.n_networks = n_networks
        self.min_value = min_value
        self.max_value = max_value
        self.add_indicator = add_indicator

    def _with_nan(self, X):
        """Replace ``missing_values`` by NaN (the core's marker of a missing entry)."""
        if _marks_nan(self.missing_values):
            return X
        if sp.issparse(X):  # refused by the input validation, with a clear message
            return X
        # As sklearn.impute: with another placeholder, NaN is not a missing marker but bad
        # input (it would otherwise be imputed silently as well).
        nan_error = ValueError(
            f"Input X contains NaN, but missing_values={self.missing_values!r} marks the "
            "missing entries; use missing_values=np.nan to impute NaN")
        if hasattr(X, "columns"):
            if X.isna().to_numpy().any():
                raise nan_error
            return X.mask(X == self.missing_values)
        X = np.array(X, dtype=np.float32 if getattr(X, "dtype", None) == np.float32
                     else np.float64)  # float32 stays float32 (transform's output dtype)
        if np.isnan(X).any():
            raise nan_error
        X[X == self.missing_values] = np.nan
        return X

    @_fit_context(prefer_skip_nested_validation=True)
    @_unfitted_if_it_fails(lambda self: True)
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
        self._forget_fit()  # an earlier fit may have had another n_networks
        X = self._with_nan(X)
        if self.n_networks == 1:
            GenerativeDGCSPN.fit.__wrapped__(self, X)
        else:
            self._fit_networks(X, partial=False)
        self._fit_indicator(X, first=True)
        return self

    @_unfitted_if_it_fails(_is_unfitted)
    def partial_fit(self, X, y=None):
        """One online pass over the batch ``X`` (online EM, or Adam with
        ``learning='gradient'``; initialising on the first call).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])
        y : Ignored

        Returns
        -------
        self
        """
        self._validate_params()  # every call: a set_params between calls takes effect
        first = _is_unfitted(self)
        n_fitted = len(getattr(self, "estimators_", [self]))  # one network: no estimators_
        if first:
            self._forget_fit()
        elif self.n_networks != n_fitted:
            raise ValueError(f"n_networks={self.n_networks} differs from the fitted number "
                             f"of networks ({n_fitted}); call fit to start over")
        X = self._with_nan(X)
        if self.n_networks == 1:
            GenerativeDGCSPN.partial_fit(self, X)
        else:
            self._fit_networks(X, partial=True, first=first)
        self._fit_indicator(X, first=first)
        return self

    @staticmethod
    def _missing_mask(X):
        """``(n_samples, n_features)`` NaN mask of already validated input ``X`` (with
        ``missing_values`` replaced by NaN)."""
        if hasattr(X, "isna"):
            return X.isna().to_numpy().reshape(len(X), -1)
        X = np.asarray(X, dtype=np.float64)
        return np.isnan(X.reshape(len(X), -1))

    def _fit_indicator(self, X, first):
        """Remember the features missing in ``X`` (and in the earlier ``partial_fit``
        batches, whatever ``add_indicator`` was then), and set ``indicator_``."""
        missing = self._missing_mask(X).any(axis=0)
        if not first and hasattr(self, "_missing_in_training_"):
            missing |= self._missing_in_training_
        self._missing_in_training_ = missing
        self.indicator_ = None
        if self.add_indicator:
            # Fitted on one row holding NaN where a feature was ever missing, so that its
            # features_ are the union over partial_fit calls.
            self.indicator_ = MissingIndicator(error_on_new=False).fit(
                np.where(missing, np.nan, 0.0)[None, :])

    def _indicator_features(self):
        """Indices of the features that get an indicator column (also when
        ``add_indicator`` was set after fit)."""
        return np.flatnonzero(self._missing_in_training_)

    def _network_parameters(self, seed):
        """The parameters in which each network differs from this imputer (the rest are
        this imputer's): one network, given the validated images."""
        return dict(n_networks=1, missing_values=np.nan, add_indicator=False,
                    image_shape=self.image_shape_, random_state=seed)

    def _fit_networks(self, X, partial, first=True):
        """Fit (or update online) ``n_networks`` single-network imputers on ``X``."""
        images = self._prepare(X, reset=first)
        if not first:
            self._check_architecture()
            # The networks are clones made at the first fit: they get the training
            # parameters set since (batch_size, learning_rate, tol, verbose, ...), as one
            # network would use them, not those of that fit.
            own = self._network_parameters(seed=None)
            current = {name: value for name, value in self.get_params(deep=False).items()
                       if name not in own}
            for estimator in self.estimators_:
                estimator.set_params(**current)
        if first:
            self._warn_about_data(images)
            self._remember_architecture()
            rng = check_random_state(self.random_state)
            # Each network is a clone given the validated images, so they all see the
            # same image shape (and need no missing_values placeholder).
            self.estimators_ = [clone(self).set_params(**self._network_parameters(int(seed)))
                                for seed in rng.randint(0, 2**31 - 1, size=self.n_networks)]
            for estimator in self.estimators_:
                estimator._check_data = False  # checked above, once
        for i, estimator in enumerate(self.estimators_):
            if self.verbose:
                print(f"[{type(self).__name__}] network {i + 1}/{len(self.estimators_)}",
                      flush=True)
            if partial:
                estimator.partial_fit(images)
            else:
                estimator.fit(images)
        histories = [e.history_ for e in self.estimators_]
        self.n_iter_ = max(len(h) for h in histories)
        self.history_ = [float(np.mean([h[min(i, len(h) - 1)] for h in histories]))
                         for i in range(self.n_iter_)]
        self.converged_ = all(e.converged_ for e in self.estimators_)
        # The mixture scales once for all networks (see below), with their statistics.
        first_network = self.estimators_[0]
        self.typical_mean_, self.typical_scale_ = (first_network.typical_mean_,
                                                   first_network.typical_scale_)
        if self._standardize_mode() == "feature":
            self.feature_mean_ = first_network.feature_mean_
            self.feature_scale_ = first_network.feature_scale_
        return self

    def _check_fitted(self):
        if not hasattr(self, "estimators_"):
            super()._check_fitted()
        else:
            self._validate_params()

    # ------------------------------------------------------------------ the mixture
    # The networks share this imputer's scaling: the base class standardises once, with the
    # mixture's own query-time settings (``standardize``, ``batch_size``, so a set_params
    # after fit acts as on a single network), and calls the ``*_scaled`` methods below.
    # The Jacobian of the scaling is common to all networks, so it changes neither the
    # posterior over networks nor the choice made from it.
    def _log_likelihood_scaled(self, z, batch_size=None):
        if not hasattr(self, "estimators_"):
            return super()._log_likelihood_scaled(z, batch_size)
        # The uniform mixture of the networks: log (1/M) sum_m p_m(z_observed).
        return logsumexp(self._network_log_likelihoods(z, batch_size), axis=0) - np.log(
            len(self.estimators_))

    def _network_log_likelihoods(self, z, batch_size=None):
        """``(n_networks, n_samples)`` log-likelihoods of the observed entries of ``z``."""
        return np.stack([e._log_likelihood_scaled(z, batch_size or self.batch_size)
                         for e in self.estimators_])

    def _complete_scaled(self, z, method, seed, batch_size=None):
        if not hasattr(self, "estimators_"):
            return super()._complete_scaled(z, method, seed, batch_size)
        # One seed for all networks, so every row is completed by each network exactly as
        # that network alone would (same random_state).
        batch_size = batch_size or self.batch_size
        if method == "marginal" and self._fitted_parameter("leaf") != "normal":
            # Codes cannot be averaged: the most probable value of the average of the
            # networks' posterior marginals (soft voting, as the average of completions),
            # batch by batch (the marginals hold n_values per entry).
            ops = [e._get_ops() for e in self.estimators_]
            weights = [o.normalised_weights() for o in ops]  # once per query

            def vote(batch, start):
                total = sum(o.predictive(batch, w).numpy() for o, w in zip(ops, weights))
                return np.argmax(total, axis=-1)

            return self._map_batches(vote, z, batch_size).astype(np.float64)
        completed = np.stack([e._complete_scaled(z, method, seed, batch_size)
                              for e in self.estimators_]).astype(np.float64)
        if method == "marginal":
            return completed.mean(axis=0)
        # 'mpe': the network most probable given the observed entries; 'sample': a network
        # drawn from that posterior (uniform prior), which makes the draw exact. Every
        # network completes every row (M times the work of completing only the rows it
        # wins), so that a row's draws do not depend on which other rows chose it.
        log_post = self._network_log_likelihoods(z, batch_size)
        if method == "mpe":
            chosen = np.argmax(log_post, axis=0)
        else:
            uniform = np.random.RandomState(seed).random_sample(len(z))
            chosen = (uniform > np.cumsum(softmax(log_post, axis=0), axis=0)).sum(axis=0)
            chosen = np.minimum(chosen, len(self.estimators_) - 1)
        return completed[chosen, np.arange(len(z))]

    def _draw_scaled(self, n_samples, rng, batch_size=None):
        if not hasattr(self, "estimators_"):
            return super()._draw_scaled(n_samples, rng, batch_size)
        # The uniform mixture: each draw from a network picked uniformly. Every network
        # gets a random state of its own first, drawn whether it is picked or not, so that
        # the first n of n + k samples are the n samples (as for one network).
        seeds = rng.randint(0, 2**31 - 1, size=len(self.estimators_))
        chosen = rng.randint(len(self.estimators_), size=n_samples)
        out = np.empty((n_samples,) + self.image_shape_, np.float32)
        for m in np.unique(chosen):
            rows = chosen == m
            out[rows] = self.estimators_[m]._draw_scaled(
                int(rows.sum()), np.random.RandomState(seeds[m]), batch_size or self.batch_size)
        return out

    def score_samples(self, X):
        """Log-likelihood of each sample, its missing entries (``missing_values``)
        marginalised; see ``DGCSPNDensityEstimator.score_samples``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])

        Returns
        -------
        log_prob : ndarray of shape (n_samples,)
        """
        self._check_fitted()  # before missing_values is read
        return super().score_samples(self._with_nan(X))

    def transform(self, X):
        """Impute all missing entries of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])

        Returns
        -------
        X_imputed : ndarray of the same shape as ``X``, float32 for float32 input
            Image arrays come back as images, except when ``set_output`` asks for a
            DataFrame: then ``(n_samples, n_features)``, columns as
            ``get_feature_names_out()``. With ``add_indicator``: ``(n_samples, n_features
            + n_indicator_features)``, the indicator columns 0 / 1.
        """
        self._check_fitted()  # before missing_values and completion are read
        X = self._with_nan(X)
        X_imputed = self.impute(X, method=self.completion, random_state=0)
        if self.add_indicator:
            features = self._indicator_features()
            indicator = self._missing_mask(X)[:, features].astype(X_imputed.dtype)
            return np.hstack([X_imputed.reshape(len(X_imputed), -1), indicator])
        if X_imputed.ndim > 2 and _get_output_config("transform", self)["dense"] != "default":
            X_imputed = X_imputed.reshape(len(X_imputed), -1)
        return X_imputed

    def inverse_transform(self, X):
        """Put ``missing_values`` back where the indicator columns of ``transform``'s
        output say an entry was missing (needs ``add_indicator=True``); features without an
        indicator column keep their values.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features + n_indicator_features)

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        self._check_fitted()
        if not self.add_indicator:
            raise ValueError("inverse_transform needs the indicator columns: set "
                             "add_indicator=True")
        features = self._indicator_features()
        X = check_array(X, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        n_features = self.n_features_in_
        if X.shape[1] != n_features + len(features):
            raise ValueError(f"X has {X.shape[1]} features, but transform's output has "
                             f"{n_features} + {len(features)} indicator features")
        X_original = X[:, :n_features].copy()
        missing = X[:, n_features:] != 0
        fill = np.nan if _marks_nan(self.missing_values) else self.missing_values
        X_original[:, features] = np.where(missing, fill, X_original[:, features])
        return X_original

    def get_feature_names_out(self, input_features=None):
        """Output feature names: the input features, then with ``add_indicator`` one
        ``missingindicator_<name>`` per indicator column.

        Parameters
        ----------
        input_features : array-like of str or None

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        names = super().get_feature_names_out(input_features)
        if not self.add_indicator:
            return names
        indicators = [f"missingindicator_{names[i]}" for i in self._indicator_features()]
        return np.concatenate([names, np.asarray(indicators, dtype=object)])

    def _prepare(self, X, reset):
        images = super()._prepare(X, reset)
        if reset:
            self._bounds()  # bad bounds fail before any training
        return images

    def _bounded(self, completed_rows):
        low, high = self._bounds()
        return np.clip(completed_rows, low, high)

    def _bounds(self):
        """``min_value`` / ``max_value`` as arrays of shape ``(n_features,)``."""
        bounds = []
        for name, default in (("min_value", -np.inf), ("max_value", np.inf)):
            value = getattr(self, name)
            value = np.asarray(default if value is None else value, dtype=np.float64)
            if np.isnan(value).any():  # np.clip would make every completion NaN
                raise ValueError(f"{name} must not be NaN (use {default} for no bound)")
            if value.ndim == 0:
                value = np.full(self.n_features_in_, float(value))
            elif value.shape != (self.n_features_in_,):
                raise ValueError(f"{name} must be a number or hold one value per feature "
                                 f"({self.n_features_in_}), got shape {value.shape}")
            bounds.append(value)
        low, high = bounds
        if np.any(low > high):
            first = int(np.argmax(low > high))
            raise ValueError(f"min_value must not exceed max_value; for feature {first} "
                             f"they are {low[first]} and {high[first]}")
        return low, high

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _marks_nan(missing_values):
    """Whether the placeholder ``missing_values`` means NaN (NaN, pd.NA or None)."""
    return missing_values is None or is_scalar_nan(missing_values) or is_pandas_na(
        missing_values)
