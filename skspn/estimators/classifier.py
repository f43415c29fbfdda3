"""``DGCSPNClassifier``: a discriminatively trained DGC-SPN that is still a full joint model."""

from __future__ import annotations

import math
import time
from numbers import Integral, Real

import numpy as np
from scipy.special import log_softmax, logsumexp
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.model_selection import train_test_split
from sklearn.utils import assert_all_finite, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, column_or_1d

from ._base import BaseDGCSPN, _is_unfitted, _unfitted_if_it_fails, leaf_min_scale


class DGCSPNClassifier(ClassifierMixin, BaseDGCSPN):
    """Classification with a Deep Generalized Convolutional Sum-Product Network.

    One network models ``p(x, y)``: ``K`` class sums over all full-scope top cells and a
    class prior give ``log p(x, y=k)``; it is trained with Adam on the cross-entropy of
    ``p(y | x)``. Missing pixels (NaN) are marginalised exactly, in training and in
    prediction, and ``score_samples`` gives ``log p(x)``. Defaults follow the paper's
    discriminative set-up (Normal leaves with 32 trainable components per pixel, two
    non-overlapping product layers, then overlapping ones with dilations 1, 2, 4, ...,
    sums 64, 64, 64, 128, 128, product and input dropout 0.2), scaled down automatically
    for small images, with one difference: ``depth='auto'`` stops at full scope, which
    on 28 x 28 images is one layer (d = 8) and one sum short of the paper's MNIST network
    (``depth=6``, as in ``benchmarks/classification.py``).

    Parameters
    ----------
    image_shape : tuple of int, default=None
        ``(H, W)`` or ``(H, W, C)``; ``None`` infers it (see ``DGCSPNDensityEstimator``).
    depth : int or 'auto', default='auto'
        Number of product layers (non-overlapping ones included).
    sum_channels : int or sequence of int, default=(64, 64, 64, 128, 128)
        Sums per cell after each product but the last; a shorter sequence is extended with
        its last value, a longer one cut to the number of sum layers (so one sequence
        serves a grid over ``depth``).
    n_components : int, default=32
    n_nonoverlapping : int, default=2
        Stride = kernel layers first (fewer when the image is too small).
    kernel_size : int or (int, int), default=2
        As ``DGCSPNDensityEstimator``.
    first_product : {'depthwise', 'one_hot'}, default='depthwise'
        Channel mode of the first product (one-hot keeps a random subset of 256
        combinations when there are more).
    product_dropout : float in [0, 1), default=0.2
        Rate at which product outputs are set to log 0 while training.
    input_dropout : float in [0, 1), default=0.2
        Rate at which whole pixels are marginalised (log 1) while training.
        Both dropouts are the paper's regularisation for long fits (400 epochs); they slow
        the first epochs, most of all in narrow networks. On 600 MNIST images, 5 epochs,
        300 test images: 40 % accuracy with the defaults against 64 % with both at 0; with
        ``n_components=8, sum_channels=8`` 11 % (chance) against 51 % with
        ``product_dropout=0``. For short fits, or a grid search over small networks, set
        them to 0 or include them in the grid.
    learning_rate : float, default=1e-2
        Adam step size. The paper used 1e-4 (its code 1e-3) for 400 epochs on MNIST;
        1e-2 reaches the same regime in far fewer epochs on small data (digits, 75 / 25
        stratified split, 10 epochs, ``random_state`` 0 / 1: 93 % / 96 % test accuracy,
        against 67 % / 76 % with 1e-3).
    batch_size : int, default=64
        Samples per Adam step (the global batch under a ``tf.distribute`` strategy).
    max_epochs : int, default=50
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data and stop when validation accuracy has
        not improved for ``n_iter_no_change`` epochs (the best weights are kept). Warm fits
        on the same data hold out the same samples, and count the model they start from
        as a candidate: they end on it unless an epoch does better on the hold-out.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=5
    standardize : {'sample', 'feature'} or None, default='sample'
        Per-image standardisation (one mean and scale per row, from its observed
        values, as the paper), per-feature statistics of the training data, or none.
        ``'sample'`` suits images, whose pixels share one unit; for tabular data with
        columns in different units use ``'feature'`` (a fit with ``'sample'`` warns when
        a quarter of the features vary over 100 times less than the most varying one).
        Queries and warm fits scale X with the current setting, as the generative
        estimators do: a ``set_params`` after ``fit`` changes how X reaches a network
        trained with the fitted setting (``'feature'`` needs a fit with ``'feature'``).
    leaf_scale : float, default=1.0
        Initial standard deviation of the Normal components (standardised units; the
        paper's unit variance). Means start equidistant per pixel over the 1st-99th
        percentile of the standardised training data, so components separate pixel
        values from the first step. Training keeps the scales above
        ``min(0.01, leaf_scale)``. 1.0 learned faster than 0.5 on the paper's MNIST
        network (10000 images, 4 epochs: 92.7 against 89.9 % test accuracy; Fashion-MNIST
        81.8 against 81.4 %; ``benchmarks/README.md``).
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
    warm_start : bool, default=False
        Continue from the previous fit's weights and optimiser state.
    jit_compile : bool, default=False
        Compile the training step and the queries with XLA. On the paper's MNIST
        classifier the Adam step ran 1.1-1.6x faster on two CPUs (batch 64-512,
        ``benchmarks/README.md``), but its first call took 7-9 s instead of 2-6 s on one
        and 2.7-3.6 s instead of 0.8-2.0 s on the other: worth it for long fits, not for
        small ones. Since the large layers of images of 256 pixels or more are compiled
        by XLA either way, a later run on a third CPU took about as long to compile with
        it as without (the MNIST classifier's Adam step at batch 64: 6.5 against 7.4 s)
        and ran that step 1.3-1.5x faster. Not available under a ``tf.distribute`` strategy.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    image_shape_ : tuple (H, W, C)
    n_features_in_ : int
    feature_names_in_ : ndarray of str (DataFrame input only)
    history_ : dict of lists
        ``loss``, ``train_accuracy`` and ``validation_accuracy`` (None without early
        stopping) per epoch. ``train_accuracy`` is measured on up to 500 training samples
        drawn afresh each epoch (cheap), ``validation_accuracy`` on the whole hold-out.
    n_iter_ : int
    network_weights_ : list of ndarray
    seed_ : int
        Seed of the network's initial weights and of the early-stopping split, drawn
        from ``random_state`` by the fit that built the network (warm fits keep it).
    leaf_range_ : tuple (low, high)
        The 1st and 99th percentiles of the standardised training values; the Normal
        leaves' initial means are spread evenly over it.
    feature_mean_, feature_scale_, typical_mean_, typical_scale_ :
        Standardisation statistics, see ``DGCSPNDensityEstimator``.

    Notes
    -----
    Fitted inside ``with strategy.scope():`` (``tf.distribute.MirroredStrategy`` or
    ``MultiWorkerMirroredStrategy``), every replica takes its share of each global batch
    of ``batch_size`` samples and the gradients are summed across replicas; dropout is
    drawn per sample, so the fit is the single-device fit up to float rounding. Across
    machines, every worker runs the same code on the same ``X`` and ``y``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skspn import DGCSPNClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = DGCSPNClassifier(max_epochs=1, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 10)
    """

    #: scikit-learn estimator checks this estimator fails by design, with the reason.
    #: (scikit-learn >= 1.6 has no tag for this; tests pass it as ``expected_failed_checks``.)
    _expected_failed_checks = {
        "check_sample_weight_equivalence_on_dense_data":
            "training is stochastic mini-batch Adam with dropout: a sample of weight 2 is not "
            "the same as the sample repeated (other batches, other dropout draws)",
    }

    _parameter_constraints: dict = {
        **BaseDGCSPN._parameter_constraints,
        "first_product": [StrOptions({"one_hot", "depthwise"})],
        "product_dropout": [Interval(Real, 0, 1, closed="left")],
        "input_dropout": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
        "jit_compile": ["boolean"],
    }

    def __init__(self, *, image_shape=None, depth="auto", sum_channels=(64, 64, 64, 128, 128),
                 n_components=32, n_nonoverlapping=2, kernel_size=2, first_product="depthwise",
                 product_dropout=0.2, input_dropout=0.2, learning_rate=1e-2, batch_size=64,
                 max_epochs=50, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=5, standardize="sample", leaf_scale=1.0, random_state=None,
                 verbose=0, warm_start=False, jit_compile=False):
        self.image_shape = image_shape
        self.depth = depth
        self.sum_channels = sum_channels
        self.n_components = n_components
        self.n_nonoverlapping = n_nonoverlapping
        self.kernel_size = kernel_size
        self.first_product = first_product
        self.product_dropout = product_dropout
        self.input_dropout = input_dropout
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.standardize = standardize
        self.leaf_scale = leaf_scale
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.jit_compile = jit_compile

    # ------------------------------------------------------------------ network
    def _make_network(self, z=None):
        from ..core.leaves import NormalLeaf, equidistant_means

        h, w, c = self.image_shape_
        low, high = self.leaf_range_
        loc = equidistant_means((h, w), c, self.n_components, low, high)
        leaf = NormalLeaf(loc, scale=self.leaf_scale, trainable=True,
                          min_scale=leaf_min_scale(self.leaf_scale))
        products, channels = self._plan(self.first_product)
        net = self._build_network(leaf, products, channels, len(self.classes_),
                                  log_space=True, seed=self.seed_)
        return net

    def _make_learner(self):
        from ..core.learning import GradientLearner

        strategy = getattr(self, "_strategy", None)
        if self.jit_compile and strategy is not None:
            raise ValueError("jit_compile=True is not available under a tf.distribute "
                             "strategy; fit outside strategy.scope() or set "
                             "jit_compile=False")
        learner = GradientLearner(self._network, "ce", self.learning_rate,
                                  self.product_dropout, self.input_dropout,
                                  jit_compile=self.jit_compile, strategy=strategy)
        state = getattr(self, "_optimizer_state", None)
        if state is not None:
            learner.optimizer.set_state(state)
        return learner

    def _make_ops(self):
        from ..core.learning import CompiledOps

        return CompiledOps(self._network, jit_compile=self.jit_compile)

    def _resume(self):
        """Continue training a fitted (or unpickled) classifier: network and learner.

        The learner follows the current parameters, as one rebuilt after unpickling does:
        the learning rate is set in place, other dropout rates or ``jit_compile`` (traced
        into its step) need a new learner, which takes over the optimiser's moments.
        """
        learner = self._training_runtime()
        if (learner.product_dropout, learner.input_dropout, learner.jit_compile) != (
                self.product_dropout, self.input_dropout, bool(self.jit_compile)):
            self._optimizer_state = learner.optimizer.get_state()
            self._learner = self._make_learner()
            self._ops = self._make_ops()

    # ------------------------------------------------------------------ fitting
    def _validate_targets(self, y, n_samples):
        y = column_or_1d(y, warn=True)
        if len(y) != n_samples:
            raise ValueError(f"X has {n_samples} samples but y has {len(y)}")
        # Before the target check, which casts float NaN to int (a RuntimeWarning) and
        # compares NaN with strings (TypeError).
        if y.dtype.kind in "fO":
            assert_all_finite(y, input_name="y")
        check_classification_targets(y)
        return y

    @_fit_context(prefer_skip_nested_validation=True)
    @_unfitted_if_it_fails(lambda self: not self._continues())
    def fit(self, X, y, sample_weight=None):
        """Fit the classifier.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])
            NaN entries are marginalised.
        y : array-like of shape (n_samples,)
            Class labels (ints or strings).
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self
        """
        continuing = self._continues()
        images = self._validate_input(X, reset=not continuing)
        y = self._validate_targets(y, len(images))
        if self.early_stopping:  # before the network is built
            n_val = self._validation_size(len(images))
            if len(images) - n_val < 1:
                raise ValueError(
                    f"early_stopping with validation_fraction={self.validation_fraction} "
                    f"holds out {n_val} of {len(images)} samples, leaving none to train on; "
                    "lower validation_fraction or set early_stopping=False")
        sample_weight = _check_sample_weight(sample_weight, images, dtype=np.float32,
                                             ensure_non_negative=True)
        if continuing:
            unseen = np.setdiff1d(np.unique(y), self.classes_)
            if unseen.size:
                raise ValueError(f"y has classes {unseen.tolist()} not seen in the first fit")
            self._resume()
        else:
            classes = np.unique(y)
            if len(classes) < 2:
                raise ValueError(f"y has only one class ({classes.tolist()[0]!r}, n_samples="
                                 f"{len(y)}); a classifier needs at least 2 classes")
            self._initialise(images, classes, y, sample_weight)
        codes = np.searchsorted(self.classes_, y).astype(np.int32)
        self._train(images, codes, sample_weight, self.max_epochs)
        return self

    def _continues(self):
        """Whether ``fit`` continues training the fitted network (``warm_start``)."""
        return self.warm_start and hasattr(self, "network_weights_")

    @_unfitted_if_it_fails(_is_unfitted)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``(X, y)``; ``classes`` is required on the first call.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self
        """
        # Every call: a set_params between calls takes effect (learning rate, dropout).
        self._validate_params()
        first = _is_unfitted(self)
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
        images = self._validate_input(X, reset=first)
        y = self._validate_targets(y, len(images))
        sample_weight = _check_sample_weight(sample_weight, images, dtype=np.float32,
                                             ensure_non_negative=True)
        if first:
            classes = column_or_1d(classes)
            try:  # NaN, floats with fractions: refused, as labels in y
                check_classification_targets(classes)
            except ValueError as exc:
                raise ValueError(f"classes: {exc}") from None
            classes = np.unique(classes)
            if len(classes) < 2:
                raise ValueError("classes must hold at least 2 classes")
            self._initialise(images, classes)
        else:
            if classes is not None and not np.array_equal(np.unique(column_or_1d(classes)),
                                                          self.classes_):
                raise ValueError(f"classes={list(classes)!r} is not the same as on the first "
                                 f"call to partial_fit ({self.classes_.tolist()!r}); the "
                                 "classes are fixed once fitted: call fit to start over")
            self._resume()
            self._check_network_size(len(images))  # later batches may be larger
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if unseen.size:
            raise ValueError(f"y has classes {unseen.tolist()} not in classes_")
        codes = np.searchsorted(self.classes_, y).astype(np.int32)
        self._train(images, codes, sample_weight, 1, validation=False)
        return self

    def _initialise(self, images, classes, y=None, sample_weight=None):
        """A new network; the class prior starts at the (weighted) class frequencies of
        ``y``, or uniform without it (``partial_fit``: the first chunk of a stream need
        not hold every class, and a prior of ~0 for a class Adam did not lift in four
        passes over digits)."""
        self._optimizer_state = None  # a new fit starts a new optimiser
        self.classes_ = classes
        self._rng = check_random_state(self.random_state)
        self._setup_distribution(images)
        self.seed_ = int(self._rng.randint(0, 2**31 - 1))
        self._check_network_size(len(images))
        self._fit_scaler(images)
        z, _, _ = self._scale(images)
        observed = z[~np.isnan(z)]
        low, high = (np.percentile(observed, [1, 99]) if observed.size else (-1.5, 1.5))
        if not high > low:
            low, high = low - 1.0, high + 1.0
        self.leaf_range_ = (float(low), float(high))
        with self._distribution_scope():
            self._network = self._make_network()
        self._remember_architecture()
        if y is not None:
            freq = np.array([sample_weight[y == c].sum() for c in classes], np.float64)
            freq = np.maximum(freq / freq.sum(), 1e-6)
            self._network.class_prior.accumulator.assign(np.log(freq).reshape(1, -1, 1))
        self._learner = self._make_learner()
        self._ops = self._make_ops()
        self.history_ = {"loss": [], "train_accuracy": [], "validation_accuracy": []}
        self.n_iter_ = 0

    def _train(self, images, codes, sample_weight, n_epochs, validation=None):
        validation = self.early_stopping if validation is None else validation
        z, _, _ = self._scale(images)
        if validation:
            # Stratified when every class can be on both sides; else a plain random split
            # (train_test_split refuses to stratify then).
            n_val = self._validation_size(len(z))
            counts = np.bincount(codes)
            counts = counts[counts > 0]
            can_stratify = counts.min() >= 2 and min(n_val, len(z) - n_val) >= len(counts)
            stratify = codes if can_stratify else None
            # Keyed by the model's seed, not drawn: warm fits on the same data hold out the
            # same samples (a new split each time validated on samples trained on before).
            idx_train, idx_val = train_test_split(
                np.arange(len(z)), test_size=self.validation_fraction,
                random_state=self.seed_, stratify=stratify)
        else:
            idx_train, idx_val = np.arange(len(z)), None
        if not sample_weight[idx_train].sum() > 0:
            raise ValueError("sample_weight is 0 for every training sample"
                             + (" left after the early-stopping hold-out" if validation
                                else "") + ": there is nothing to fit")
        weight = sample_weight / sample_weight[idx_train].mean()
        best, best_weights, since_best = -np.inf, None, 0
        if idx_val is not None and self.n_iter_ > 0:
            # A warm fit: the model it starts from is the first candidate, so that epochs
            # which only do worse on the hold-out do not replace it (as scikit-learn's
            # MLPClassifier keeps its best validation score across warm fits).
            best = float(np.mean(self._predict_codes(z[idx_val]) == codes[idx_val]))
            best_weights = self._network.get_weights()
        for epoch in range(n_epochs):
            t0 = time.time()
            loss = self._epoch(z[idx_train], codes[idx_train], weight[idx_train])
            check = idx_train[self._rng.permutation(len(idx_train))[:500]]  # cheap estimate
            joint = self._joint(z[check])
            # The loss was measured before the epoch's last update; this is after it.
            self._check_finite_training(np.sum(joint), "joint log-likelihood after the epoch")
            train_acc = float(np.mean(np.argmax(joint, axis=1) == codes[check]))
            val_acc = None
            if idx_val is not None:
                val_acc = float(np.mean(self._predict_codes(z[idx_val]) == codes[idx_val]))
            self.history_["loss"].append(loss)
            self.history_["train_accuracy"].append(train_acc)
            self.history_["validation_accuracy"].append(val_acc)
            self.n_iter_ += 1
            self._log_epoch(epoch + 1, n_epochs, time.time() - t0, loss=loss,
                            train_accuracy=train_acc, validation_accuracy=val_acc)
            if val_acc is not None:
                if val_acc > best:
                    best, best_weights, since_best = val_acc, self._network.get_weights(), 0
                else:
                    since_best += 1
                    if since_best >= self.n_iter_no_change:
                        break
        if best_weights is not None:
            self._network.set_weights(best_weights)
        self._sync_weights()
        self._optimizer_state = self._learner.optimizer.get_state()

    def _validation_size(self, n):
        """Samples held out for early stopping (train_test_split rounds up)."""
        return math.ceil(self.validation_fraction * n)

    def _epoch(self, z, codes, weight):
        from ..core.distribute import is_multi_worker

        multi_worker = is_multi_worker(getattr(self, "_strategy", None))
        n, batch = len(z), self._training_batch(len(z))
        order = self._rng.permutation(n)
        total, start_time = 0.0, time.time()
        n_batches = -(-n // batch)
        for i, (start, stop, _) in enumerate(self._padded_batches(n, batch)):
            idx = order[start:stop]
            seed = self._seed_pair(self._rng)
            # A batch of zero total weight (bootstrap weights of 0) has nothing to learn:
            # no step, not even Adam's momentum. Across workers every worker must still
            # join the step's all-reduce; there the core's step with zero gradients runs.
            if weight[idx].sum() > 0 or multi_worker:
                loss = self._learner.step(self._pad(z[idx], batch),
                                          self._pad(weight[idx], batch, 0.0), seed,
                                          self._pad(codes[idx], batch, 0))
                total += float(loss) * weight[idx].sum()
            self._progress(i + 1, n_batches, start_time)
        self._check_finite_training(total / weight.sum(), "training loss")
        return float(total / weight.sum())

    # ------------------------------------------------------------------ queries
    def _joint(self, z):
        ops = self._get_ops()
        weights = ops.normalised_weights()  # once per query, not per batch
        return self._map_batches(lambda b, _: ops.joint_log_likelihood(b, weights).numpy(), z)

    def _predict_codes(self, z):
        return np.argmax(self._joint(z), axis=1)

    def _standardised(self, X):
        """Validated ``images`` of a query ``X``, standardised: ``(images, z, scale)``."""
        self._check_fitted()
        images = self._validate_input(X, reset=False)
        z, _, scale = self._scale(images)
        return images, z, scale

    def _joint_from_X(self, X):
        _, z, _ = self._standardised(X)
        return self._joint(z).astype(np.float64)

    def predict_log_proba(self, X):
        """Log of ``p(y | x)``, missing entries marginalised.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        joint = self._joint_from_X(X)
        # The maximum first: joints of far-out rows are so large (say -1e20) that adding
        # log(n_classes) to them is lost to rounding, and rows would not sum to 1.
        return log_softmax(joint, axis=1)

    def predict_proba(self, X):
        """``p(y | x)``; rows sum to 1.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """Most probable class per sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        joint = self._joint_from_X(X)
        return self.classes_[np.argmax(joint, axis=1)]

    def score_samples(self, X):
        """``log p(x)``, the class sums mixed by the prior, missing entries marginalised.

        With ``standardize='feature'`` or None the exact log-density of the observed
        entries in ``X``'s own units (the Jacobian of the scaling included, as
        ``DGCSPNDensityEstimator.score_samples``); with ``'sample'`` the log-density of
        the per-sample standardised image, blind to each row's own level and scale.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, H, W[, C])

        Returns
        -------
        log_prob : ndarray of shape (n_samples,)
        """
        images, z, scale = self._standardised(X)
        return (logsumexp(self._joint(z).astype(np.float64), axis=1)
                + self._log_jacobian(images, scale))
