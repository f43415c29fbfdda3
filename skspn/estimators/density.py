"""Generative DGC-SPNs: ``DGCSPNDensityEstimator`` (and the shared base of the imputer)."""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import DensityMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import (BaseDGCSPN, _caller_stacklevel, _images_from_list, _is_unfitted,
                    _unfitted_if_it_fails, leaf_min_scale)

#: leaf='categorical': the most categories (8-bit codes); the leaves' per-category
#: tensors grow with the count, and raw identifiers (zip codes) would exhaust memory.
MAX_CATEGORIES = 256


class GenerativeDGCSPN(BaseDGCSPN):
    """Shared implementation of the density estimator and the imputer."""

    _parameter_constraints: dict = {
        **BaseDGCSPN._parameter_constraints,
        "leaf": [StrOptions({"normal", "bernoulli", "categorical"})],
        "n_categories": [None, Interval(Integral, 2, MAX_CATEGORIES, closed="both")],
        "first_product": [StrOptions({"one_hot", "depthwise"})],
        "learning": [StrOptions({"hard_em_unweighted", "hard_em", "soft_em", "gradient"})],
        "em_update": [StrOptions({"epoch", "online"})],
        "tol": [Interval(Real, 0, None, closed="left"), None],
    }

    def __init__(self, *, image_shape=None, depth="auto", sum_channels=16, n_components=4,
                 leaf="normal", n_categories=None, kernel_size=2, first_product="one_hot",
                 n_nonoverlapping=0, learning="hard_em_unweighted", em_update="epoch",
                 max_epochs=15, batch_size=128,
                 learning_rate=1e-2, tol=0.1, standardize="feature", leaf_scale=1.0,
                 random_state=None, verbose=0):
        self.image_shape = image_shape
        self.depth = depth
        self.sum_channels = sum_channels
        self.n_components = n_components
        self.leaf = leaf
        self.n_categories = n_categories
        self.kernel_size = kernel_size
        self.first_product = first_product
        self.n_nonoverlapping = n_nonoverlapping
        self.learning = learning
        self.em_update = em_update
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.tol = tol
        self.standardize = standardize
        self.leaf_scale = leaf_scale
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ data checks
    # Queries answer with the fitted model after a set_params(leaf=...), as they do for the
    # other architecture parameters (_rebuild_network): the data check and the scaling
    # follow the leaf the network has, not the one set since.
    def _standardize_mode(self):
        return None if self._fitted_parameter("leaf") != "normal" else self.standardize

    _architecture_parameters = BaseDGCSPN._architecture_parameters + ("n_categories",)

    def _architecture(self):
        architecture = super()._architecture()
        # None takes the fitted count, so only a different declared count differs; other
        # leaves have none.
        n_categories = None
        if self.leaf == "categorical":
            n_categories = (self.n_categories if self.n_categories is not None
                            else getattr(self, "n_categories_", None))
        architecture["leaf / n_categories"] = (architecture.pop("leaf"), n_categories)
        return architecture

    def _check_values(self, images, reset):
        """Discrete leaves need 0/1 (Bernoulli) or integer category codes (Categorical).
        With ``reset`` (a fit) also sets ``n_categories_`` for Categorical leaves and drops
        an earlier fit's, as ``validate_data(reset=True)`` sets ``n_features_in_``."""
        leaf = self.leaf if reset else self._fitted_parameter("leaf")
        if reset:
            self.__dict__.pop("n_categories_", None)  # a refit with another leaf has none
        if leaf == "normal":
            return
        observed = images[~np.isnan(images)]
        if leaf == "bernoulli":
            if not np.isin(observed, (0.0, 1.0)).all():
                raise ValueError("leaf='bernoulli' needs X to hold only 0, 1 (or NaN for "
                                 "missing values)")
            return
        if (observed < 0).any() or (observed != np.round(observed)).any():
            raise ValueError("leaf='categorical' needs X to hold non-negative integer "
                             "category codes (or NaN for missing values)")
        largest = int(observed.max(initial=0))
        if reset:
            if self.n_categories is not None:
                if largest >= self.n_categories:
                    raise ValueError(f"X holds category {largest}, but n_categories="
                                     f"{self.n_categories} allows the codes 0.."
                                     f"{self.n_categories - 1}")
                self.n_categories_ = self.n_categories
                return
            if largest >= MAX_CATEGORIES:
                raise ValueError(
                    f"leaf='categorical' reads X as category codes 0..n-1 and holds up to "
                    f"{MAX_CATEGORIES} categories; X holds code {largest} "
                    "(re-encode sparse identifiers, e.g. with OrdinalEncoder)")
            self.n_categories_ = max(largest + 1, 2)
        elif largest >= self.n_categories_:
            inferred = self._fitted_parameter("n_categories") is None
            raise ValueError(
                f"X holds category {largest}, but the estimator was fitted with the "
                f"categories 0..{self.n_categories_ - 1}" + (
                    " (those in its training data: declare all codes with n_categories, "
                    "e.g. for a stream of partial_fit batches or a split that may miss "
                    "rare codes)" if inferred else ""))

    def _prepare(self, X, reset):
        images = self._validate_input(X, reset=reset)
        self._check_values(images, reset)
        return images

    # ------------------------------------------------------------------ network
    def _make_network(self, z=None):
        from ..core import leaves as L

        h, w, c = self.image_shape_
        k = self.n_components
        trainable = self.learning == "gradient"
        # Leaves initialised from the training data z; without it (a rebuild from stored
        # weights) any values of the right shape do, as the weights replace them.
        if z is None:
            z = np.full((1, h, w, c), np.nan, np.float32)
        if self.leaf == "normal":
            leaf = L.NormalLeaf(L.component_means(z, k), scale=self.leaf_scale,
                                trainable=trainable, min_scale=leaf_min_scale(self.leaf_scale))
        elif self.leaf == "bernoulli":
            leaf = L.BernoulliLeaf(L.bernoulli_logits(z, k), trainable=trainable)
        else:
            leaf = L.CategoricalLeaf(L.categorical_logits(z, k, self.n_categories_),
                                     trainable=trainable)
        products, channels = self._plan(self.first_product)
        return self._build_network(leaf, products, channels, None,
                                   log_space=self.learning == "gradient", seed=self.seed_)

    def _make_learner(self, online=False):
        from ..core.learning import EMLearner, GradientLearner

        strategy = getattr(self, "_strategy", None)
        if self.learning == "gradient":
            learner = GradientLearner(self._network, "nll", self.learning_rate,
                                      strategy=strategy)
            state = getattr(self, "_optimizer_state", None)
            if state is not None:
                learner.optimizer.set_state(state)
            return learner
        return EMLearner(self._network, self.learning,
                         update="online" if online else self.em_update, strategy=strategy)

    # ------------------------------------------------------------------ fitting
    def _initialise(self, images, online=False):
        self._optimizer_state = None  # a new fit starts a new optimiser
        self._rng = check_random_state(self.random_state)
        self._setup_distribution(images)
        self.seed_ = int(self._rng.randint(0, 2**31 - 1))
        self._check_network_size(len(images))
        self._remember_architecture()  # before scaling, which depends on the leaf
        self._fit_scaler(images)
        z, _, _ = self._scale(images)
        with self._distribution_scope():
            self._network = self._make_network(z)
        self._learner = self._make_learner(online)
        self._ops = self._make_ops()
        self.history_ = []
        self.n_iter_ = 0
        self.converged_ = False

    def _warn_small_first_batch(self, n_rows):
        """``partial_fit``'s first batch fixes, for the whole stream, what ``fit`` estimates
        from all of X: the leaf components (per-feature quantiles) and the standardisation
        statistics. A 1-row first batch left a digits model ~1000 nats per sample below a
        fit, silently; 10 rows per leaf component is a floor, not a recommendation."""
        needed = 10 * self.n_components
        if n_rows < needed:
            warnings.warn(
                f"partial_fit's first batch has {n_rows} rows: it fixes the leaf components "
                "(and any standardisation statistics) for the whole stream, and so few rows "
                f"estimate them poorly; start the stream with a large representative batch "
                f"(at least {needed}, 10 per leaf component) or call fit",
                UserWarning, stacklevel=_caller_stacklevel())

    def _warn_about_data(self, images):
        self._warn_unobserved_features(images)
        super()._warn_about_data(images)

    def _warn_unobserved_features(self, images):
        """Features never observed in training: kept (they are pixels of the image, which
        cannot drop them as scikit-learn's imputers drop such columns), with a warning."""
        unobserved = np.flatnonzero(np.isnan(images.reshape(len(images), -1)).all(axis=0))
        if not unobserved.size:
            return
        names = getattr(self, "feature_names_in_", None)
        shown = [names[i] if names is not None else int(i) for i in unobserved[:10]]
        more = f" and {unobserved.size - 10} more" if unobserved.size > 10 else ""
        warnings.warn(
            f"{unobserved.size} of {self.n_features_in_} features have no observed value "
            f"in the training data ({', '.join(map(str, shown))}{more}): the model learns "
            "nothing about them, so their completions and their terms in score_samples "
            "carry no information from the data", UserWarning, stacklevel=_caller_stacklevel())

    def _epoch(self, z, log_jacobian):
        """One pass over ``z`` in shuffled batches; returns the mean train log-likelihood."""
        n = len(z)
        batch = self._training_batch(n)
        order = self._rng.permutation(n)
        total, start_time = 0.0, time.time()
        n_batches = -(-n // batch)
        for i, (start, stop, _) in enumerate(self._padded_batches(n, batch)):
            idx = order[start:stop]
            xb = self._pad(z[idx], batch)
            weight = self._pad(np.ones(len(idx), np.float32), batch, 0.0)
            seed = self._seed_pair(self._rng)
            mean_ll = self._learner.step(xb, weight, seed)
            if self.learning == "gradient":  # the gradient learner reports the loss
                mean_ll = -mean_ll
            total += mean_ll * len(idx)
            self._progress(i + 1, n_batches, start_time)
        if hasattr(self._learner, "end_epoch"):
            self._learner.end_epoch()
        self._check_finite_training(total / n, "train log-likelihood")
        return total / n + log_jacobian

    def _check_final_state(self, z):
        """Each epoch's log-likelihood is measured before each batch's update: check the
        state after the last update on a batch of ``z`` (a diverged last step scored -inf
        later). EM updates are normalised counts, which cannot diverge so: no cost there."""
        if self._learns_by_gradient():
            after = self._log_likelihood_scaled(z[:self._training_batch(len(z))])
            self._check_finite_training(np.sum(after), "train log-likelihood after training")

    def _learns_by_gradient(self):
        return self.learning == "gradient"

    @_fit_context(prefer_skip_nested_validation=True)
    @_unfitted_if_it_fails(lambda self: True)
    def fit(self, X, y=None):
        """Fit the network to ``X`` (NaN entries are marginalised during learning).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])
            Training data; NaN marks missing values.
        y : Ignored

        Returns
        -------
        self
        """
        images = self._prepare(X, reset=True)
        self._initialise(images)
        z, _, scale = self._scale(images)
        log_jacobian = self._mean_log_jacobian(images, scale)
        previous = None
        for epoch in range(self.max_epochs):
            t0 = time.time()
            ll = self._epoch(z, log_jacobian)
            self.history_.append(ll)
            self.n_iter_ = epoch + 1
            self._log_epoch(epoch + 1, self.max_epochs, time.time() - t0, log_likelihood=ll)
            if previous is not None and self.tol is not None and abs(ll - previous) < self.tol:
                self.converged_ = True
                break
            previous = ll
        self._check_final_state(z)
        self._sync_weights()
        return self

    @_unfitted_if_it_fails(_is_unfitted)
    def partial_fit(self, X, y=None):
        """One online pass over the batch ``X`` (initialising on the first call).

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
        images = self._prepare(X, reset=first)
        if first:
            self._warn_small_first_batch(len(images))
            self._initialise(images, online=True)
        else:
            learner = self._training_runtime(online=True)
            if getattr(learner, "update", "online") != "online":
                self._learner = self._make_learner(online=True)
            if not hasattr(self, "_rng"):
                self._rng = check_random_state(self.random_state)
            self._check_network_size(len(images))  # later batches may be larger
        z, _, scale = self._scale(images)
        t0 = time.time()
        ll = self._epoch(z, self._mean_log_jacobian(images, scale))
        self.history_.append(ll)
        self.n_iter_ += 1
        self._log_epoch(1, 1, time.time() - t0, log_likelihood=ll)
        self._check_final_state(z)
        self._sync_weights()
        return self

    # ------------------------------------------------------------------ queries
    def _mean_log_jacobian(self, images, scale):
        return float(np.mean(self._log_jacobian(images, scale)))

    def score_samples(self, X):
        """Log-likelihood of each sample, missing (NaN) entries marginalised.

        With ``standardize='feature'`` or ``None`` this is the exact log-density of the
        observed entries of ``X`` in ``X``'s own units (the Jacobian of the scaling is
        included), comparable with ``GaussianMixture.score_samples``. With ``'sample'`` it
        is the log-density of the per-sample standardised image (each row minus its own
        mean, divided by its own standard deviation), which compares rows by shape, not by
        absolute intensity.
        For discrete leaves it is the log-probability of the observed values.

        The network computes in float32, where the square of a far outlier's distance
        overflows: a Normal leaf takes an entry more than ``1e15`` times its smallest
        possible scale (``1e13`` leaf widths with the default ``leaf_scale``) from its mean
        as being that far. The log-densities of such outliers saturate, finite and the
        same however much further out they are (with the default ``leaf_scale``, about
        ``-5e25`` per entry that far out).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])

        Returns
        -------
        log_prob : ndarray of shape (n_samples,)
        """
        self._check_fitted()
        return self._log_likelihood(self._prepare(X, reset=False))

    def _log_likelihood(self, images):
        """``score_samples`` of validated ``images`` ``(n, H, W, C)`` (NaN = missing)."""
        z, _, scale = self._scale(images)
        return self._log_likelihood_scaled(z) + self._log_jacobian(images, scale)

    def _log_likelihood_scaled(self, z, batch_size=None):
        """The network's log-likelihoods of already standardised images ``z``."""
        ops = self._get_ops()
        weights = ops.normalised_weights()  # once per query, not per batch
        ll = self._map_batches(lambda b, _: ops.log_likelihood(b, weights).numpy(), z,
                               batch_size)
        return ll.astype(np.float64)

    def score(self, X, y=None):
        """Mean log-likelihood of ``X`` (see ``score_samples``)."""
        return float(np.mean(self.score_samples(X)))

    def impute(self, X, method="marginal", random_state=None):
        """Fill the NaN entries of ``X``; observed entries are returned unchanged.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])
        method : {'marginal', 'mpe', 'sample'}
            ``'marginal'``: posterior-weighted component modes per missing value (the
            paper's inpainting; with discrete leaves, the most probable value of each
            missing entry's posterior marginal); ``'mpe'``: the max-product (MPE) completion,
            the completion of the most probable induced tree (the usual MPE approximation
            of SPNs, exact for selective networks; a sum over several trees can make
            another completion more probable); ``'sample'``: a draw from the conditional
            distribution given the observed entries.
        random_state : int, RandomState or None
            Randomness of ``method='sample'`` (the MPE is deterministic).

        Returns
        -------
        X_completed : ndarray of the same shape as ``X`` (2-D input gives 2-D output)
            float32 for float32 input (as scikit-learn's imputers), else float64.
        """
        if method not in ("marginal", "mpe", "sample"):
            raise ValueError(f"method must be 'marginal', 'mpe' or 'sample', got {method!r}")
        self._check_fitted()
        X = _images_from_list(X)
        nd_shape = X.shape if isinstance(X, np.ndarray) and X.ndim > 2 else None
        # float32 in, float32 out, pandas' nullable Float32 columns included.
        dtypes = ({str(d) for d in X.dtypes} if hasattr(X, "dtypes")
                  else {str(getattr(X, "dtype", None))})
        out_dtype = np.float32 if dtypes <= {"float32", "Float32"} else np.float64
        images = self._prepare(X, reset=False)
        completed = self._complete(images, method, check_random_state(random_state))
        # ``images`` holds the validated values in float64, not the network's float32
        # copy: observed entries come back bit for bit, whatever container X came in.
        rows = images.reshape(len(images), -1)
        out = np.where(np.isnan(rows), self._bounded(completed.reshape(len(images), -1)), rows)
        out = out.astype(out_dtype, copy=False)  # float32 X: observed entries stay exact
        if nd_shape is not None:
            out = out.reshape(nd_shape)
        return out

    def _bounded(self, completed_rows):
        """Completions ``(n, n_features)`` within the imputer's bounds (none here)."""
        return completed_rows

    def _complete(self, images, method, rng):
        """Completions of validated ``images``; one seed drawn from ``rng`` keys the random
        draws of row ``i`` with ``i`` (so a row's result does not depend on the batching)."""
        z, offset, scale = self._scale(images)
        completed = self._complete_scaled(z, method, self._seed_pair(rng))
        return (completed * scale + offset).astype(np.float64)

    def _complete_scaled(self, z, method, seed, batch_size=None):
        """The network's completions of already standardised images ``z`` (same scale)."""
        ops = self._get_ops()
        weights = ops.normalised_weights()  # once per query, not per batch
        batch_size = batch_size or self.batch_size
        # MPE's max-product forward holds [cells, batch, C_in, C_out]: use smaller batches.
        if method == "mpe":
            batch_size = max(1, min(batch_size, 32))
        return self._map_batches(
            lambda b, start: ops.complete(b, method, seed, start, weights).numpy(), z,
            batch_size)

    def sample(self, n_samples=1, random_state=None):
        """Draw samples from the fitted model.

        For conditional samples given some observed entries, use
        ``impute(X, method='sample')``. With ``standardize='sample'`` the samples are in
        per-sample standardised units (there is no per-image mean and scale to restore).

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState or None

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        self._check_fitted()
        if not isinstance(n_samples, Integral) or isinstance(n_samples, (bool, np.bool_)) \
                or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        return self._draw(n_samples, check_random_state(random_state))

    def _draw(self, n_samples, rng):
        """``sample`` after its checks: ``(n_samples, n_features)`` draws."""
        return self._unscale_draws(self._draw_scaled(n_samples, rng))

    def _draw_scaled(self, n_samples, rng, batch_size=None):
        """``(n_samples, H, W, C)`` draws of the network, on its standardised scale."""
        empty = np.full((n_samples,) + self.image_shape_, np.nan, np.float32)
        return self._complete_scaled(empty, "sample", self._seed_pair(rng), batch_size)

    def _unscale_draws(self, z):
        """Draws back on ``X``'s scale (``'sample'`` has no scale to return to)."""
        if self._standardize_mode() == "feature":
            self._check_feature_scaler()
            z = z * self.feature_scale_[None] + self.feature_mean_[None]
        return z.reshape(len(z), -1).astype(np.float64)


class DGCSPNDensityEstimator(DensityMixin, GenerativeDGCSPN):
    """Density estimation with a Deep Generalized Convolutional Sum-Product Network.

    A valid (complete and decomposable) SPN over the pixels of an image: exact
    log-likelihoods with any subset of pixels missing, posterior-marginal, MPE and sampled
    completions. Defaults follow the paper's generative set-up: Normal leaves with 4
    per-pixel quantile components, a one-hot first product and depthwise products after
    it with dilations 1, 2, 4, ... and full padding, 16 sums per cell, and hard EM with
    unweighted sum inputs (USI); the EM update is per epoch (batch EM) rather than the
    paper's online update, which measured worse (``em_update``).

    Parameters
    ----------
    image_shape : tuple of int, default=None
        ``(H, W)`` or ``(H, W, C)``. ``None``: a perfect-square number of features is an
        ``s x s`` image, anything else a ``1 x n_features`` strip; 3-D / 4-D ``X`` gives its
        own shape.
    depth : int or 'auto', default='auto'
        Number of product layers; ``'auto'`` is the minimum that reaches full scope.
        Smaller values grow the last kernel; up to 2 more add overlapping decompositions.
    sum_channels : int or list of int, default=16
        Sums per cell after each product but the last (one value, or one per layer; a
        shorter list is extended with its last value, a longer one cut to the number of
        sum layers, so one list serves a grid over ``depth``).
    n_components : int, default=4
        Leaf components per pixel. Normal leaves start at each pixel's quantile means (the
        paper's); with several colours each component is a colour of the data instead (a
        per-pixel k-means of the training colours), since a component is a product over
        the colours and EM keeps the leaves fixed.
    leaf : {'normal', 'bernoulli', 'categorical'}, default='normal'
        Discrete leaves need X in {0, 1} or integer codes 0..n-1 (n <= 256); no
        standardisation. With fewer components than categories, neighbouring codes share
        a component, their proportions fixed at each pixel's training frequencies (EM
        learns only the sums): ``n_components >= n`` gives every category its own.
    n_categories : int or None, default=None
        ``leaf='categorical'`` only: the number of category codes, 0..n_categories-1 (at
        most 256; ignored by the other leaves). ``None`` takes the largest code in the
        training data (of the first ``partial_fit`` batch) plus one, at least 2; later data
        with a larger code is then refused, so declare it for streams and for splits that
        may miss rare codes.
    kernel_size : int or (int, int), default=2
        Product kernel, the same along both axes or (height, width), e.g. ``(2, 4)``
        for wide images (axes of one cell use 1).
    first_product : {'one_hot', 'depthwise'}, default='one_hot'
        One-hot: all channel combinations (at most 256, else a seeded random subset).
    n_nonoverlapping : int, default=0
        Stride = kernel product layers first.
    learning : {'hard_em_unweighted', 'hard_em', 'soft_em', 'gradient'}
        Default ``'hard_em_unweighted'``. EM (hard with USI, hard weighted, soft) with
        fixed leaves, or Adam on the negative log-likelihood (leaves trained too).
    em_update : {'epoch', 'online'}, default='epoch'
        ``'epoch'``: counts collected over each pass with fixed weights, then the M-step
        (batch EM; measured better on digits and MNIST, see benchmarks/README.md).
        ``'online'``: the paper's online EM, counts added after every batch.
        ``partial_fit`` is always online.
    max_epochs : int, default=15
    batch_size : int, default=128
        Samples per EM / Adam step (the global batch under a ``tf.distribute`` strategy).
    learning_rate : float, default=1e-2
        Adam step size (``learning='gradient'`` only).
    tol : float or None, default=0.1
        Stop when the train log-likelihood per sample changes by less than this between
        epochs. ``None`` runs all epochs. EM settles in a few epochs; Adam
        (``learning='gradient'``) gains slowly and steadily, by an amount per epoch that
        grows with the steps per epoch (``n_samples / batch_size``) and ``learning_rate``.
        On 500 rows of 6 categorical features it gained 0.08 per epoch, so the default
        stopped it after 2 epochs, 2.1 below what 100 epochs reached; on 1400 digits it
        was still gaining 4 per epoch after the default 15 epochs. Check ``history_``; for
        gradient training set ``tol=None`` and more ``max_epochs``, or a larger
        ``learning_rate``.
    standardize : {'feature', 'sample'} or None, default='feature'
        ``'feature'``: per-feature mean and standard deviation (scores stay densities of
        X); ``'sample'``: per-image (one mean and scale over all pixels and colour
        channels), from each row's observed values, as the paper (a row with none
        observed or only equal ones takes ``typical_mean_`` and ``typical_scale_``); it
        suits images, whose pixels share one unit, and a fit with it warns when a
        quarter of the features vary over 100 times less than the most varying one;
        ``None``: raw values. With ``partial_fit``, the statistics come from the first
        batch and stay fixed, as do the leaf components (quantiles of that batch, fixed
        under EM): make the first batch large and representative.
    leaf_scale : float, default=1.0
        Standard deviation of the Normal components, in standardised units. The paper's
        unit variance completes images best (``benchmarks/README.md``); as a density it
        is wider than the data (the quantile means spread on top of it), so for
        ``score_samples`` a smaller value (e.g. 0.5), chosen on held-out ``score``, can
        fit better. Gradient learning keeps scales above ``min(0.01, leaf_scale)``.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
        1 prints one line per epoch, and a progress bar on epochs of at least 20 batches
        when stdout is a terminal or a Jupyter notebook.

    Attributes
    ----------
    image_shape_ : tuple (H, W, C)
    n_features_in_ : int
    feature_names_in_ : ndarray of str (DataFrame input only)
    history_ : list of float
        Mean train log-likelihood per epoch.
    n_iter_ : int
    converged_ : bool
        Whether ``tol`` stopped the training (the change between the last two epochs was
        below it).
    network_weights_ : list of ndarray
        The network's parameters (leaf parameters, then sum accumulators).
    seed_ : int
        Seed of the network's initial weights, drawn from ``random_state`` by the fit that
        built the network (``partial_fit`` keeps it).
    feature_mean_, feature_scale_ : ndarray of shape (H, W, C)
        Per-feature statistics of the training data (``standardize='feature'`` only).
    typical_mean_, typical_scale_ : float
        Median per-sample mean and standard deviation of the training rows, for the rows
        that ``standardize='sample'`` cannot scale by their own values.
    n_categories_ : int
        The number of category codes the leaves hold (``leaf='categorical'`` only).

    Notes
    -----
    Data-parallel training: fit inside ``with strategy.scope():`` of a
    ``tf.distribute.MirroredStrategy`` (devices) or ``MultiWorkerMirroredStrategy``
    (machines; the same ``X`` on every worker). ``batch_size`` is then the global batch;
    EM counts or gradients are summed over the replicas, which reproduces single-device
    training (hard-EM counts exactly).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skspn import DGCSPNDensityEstimator
    >>> X = load_digits().data
    >>> est = DGCSPNDensityEstimator(max_epochs=2, random_state=0).fit(X)
    >>> est.score_samples(X[:3]).shape
    (3,)
    """

    def score(self, X, y=None):
        """Mean log-likelihood of ``X`` (see ``score_samples``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])
        y : Ignored

        Returns
        -------
        score : float
        """
        return GenerativeDGCSPN.score(self, X)
