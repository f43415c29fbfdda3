"""Shared machinery of the skspn estimators.

Input validation and image-shape inference, standardisation, building the core
``DGCSPN`` from hyper-parameters, batching for training and inference, progress output
and pickling (configuration and numpy arrays only; the TensorFlow objects are rebuilt on
first use after unpickling).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
import warnings
from numbers import Integral, Real

import numpy as np
import sklearn
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import __version__

#: Pickles record the skspn version that wrote them; a different major.minor is refused
#: because the layer layout (and so the order of the stored arrays) may differ.
_STATE_VERSION_KEY = "_skspn_version"


def _compatible(version_a, version_b):
    return version_a.split(".")[:2] == version_b.split(".")[:2]


#: ``standardize='sample'`` warns when a quarter of the features vary this many times less
#: than the most varying one (standard deviations; estimated on at most
#: ``MIXED_UNITS_ROWS`` rows spread over the data).
MIXED_UNITS_RATIO = 100.0
MIXED_UNITS_ROWS = 10000

#: A one-hot first product keeps all combinations of its children's channels up to this
#: many, else a seeded random subset of this many (``scopes.plan_products``).
ONE_HOT_MAX_CHANNELS = 256


def _caller_stacklevel():
    """``stacklevel`` of a warning raised here that points at the first frame outside
    skspn, scikit-learn and joblib (the user's call, however deep the estimator's own
    calls, or a grid search's)."""
    modules = [sys.modules[__name__.split(".")[0]], sklearn, sys.modules.get("joblib")]
    inside = tuple(os.path.dirname(os.path.abspath(module.__file__)) + os.sep
                   for module in modules if module is not None)
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _channels_constraint():
    return [Interval(Integral, 1, None, closed="left"), "array-like"]


def _observed_mean_std(values, axis):
    """Mean and standard deviation (float64) of the non-NaN entries of ``values`` along
    ``axis``, and their count; 0 where nothing is observed (no empty-slice warnings)."""
    observed = ~np.isnan(values)
    count = observed.sum(axis=axis)
    filled = np.where(observed, values, 0.0)
    mean = filled.sum(axis=axis) / np.maximum(count, 1)
    deviation = np.where(observed, filled - np.expand_dims(mean, axis), 0.0)
    std = np.sqrt((deviation ** 2).sum(axis=axis) / np.maximum(count, 1))
    return mean, std, count


def _has_spread(mean, std, count):
    """Whether a standard deviation is more than the round-off of computing it: equal
    values give a few ulps of ``mean``, at most ``count * eps * |mean|``. The bound is
    relative, so data in tiny units (1e-10) keep their scale, as with scikit-learn's
    ``StandardScaler``; an absolute floor made them 'constant' and their densities wrong."""
    return std > count * np.finfo(np.float64).eps * np.abs(mean)


def _warn_if_channels_first(image_shape):
    """Warn when an (H, W, C) image shape looks like channels-first (C, H, W) data."""
    # PyTorch-style (n, 1, 28, 28) or (n, 3, 32, 32) arrays would otherwise be read as
    # 1 x 28 strips of 28 channels or 3 x 32 images of 32 channels, and fit without error
    # into a model of the wrong neighbourhoods. Only square images are flagged: strips and
    # small images with a few more channels than 4 (multichannel signals) are channels-last
    # as often.
    height, width, channels = image_shape
    if height <= 4 and width == channels > 4:
        warnings.warn(
            f"images of shape {tuple(image_shape)} are read as (height, width, channels): "
            f"{height} x {width} pixels of {channels} channels each. If the channels come "
            f"first, (channels, height, width), move them last, e.g. "
            f"np.moveaxis(X, 1, -1).", UserWarning, stacklevel=_caller_stacklevel())


def _with_channel_axis(image_shape):
    """``(H, W)`` as ``(H, W, 1)``; ``(H, W, C)`` unchanged."""
    return tuple(image_shape) + ((1,) if len(image_shape) == 2 else ())


def _integers(name, values):
    """``values`` as a list of ints, refusing anything that is not a whole number (a
    silent ``int()`` would truncate 4.5 to 4)."""
    values = list(values)
    if not all(not isinstance(v, (bool, np.bool_)) and (isinstance(v, Integral) or (
            isinstance(v, Real) and float(v).is_integer())) for v in values):
        raise ValueError(f"{name} must hold whole numbers, got {values!r}")
    return [int(v) for v in values]


def _physical_memory():
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _images_from_list(X):
    """A (nested) list of images as an array of images; anything else unchanged."""
    if isinstance(X, (list, tuple)):
        with contextlib.suppress(ValueError, TypeError):  # ragged: validate_data says so
            as_array = np.asarray(X)
            if as_array.ndim > 2:
                return as_array
    return X


def _unfitted_if_it_fails(starts_over):
    """Decorate a fit method: if ``starts_over(self)`` (evaluated before the call) and the
    fit raises, the estimator is left unfitted; if it continues a fitted model
    (``partial_fit``, warm start), that model is kept. A fit that starts over replaces
    the fitted state piece by piece (feature count, statistics, network), so a failure
    midway left a mix of the old model and the new data's statistics, which answered
    silently wrong or failed inside TensorFlow; a continued one updates the live network
    batch by batch, so an interrupted one served weights that ``network_weights_`` and
    ``history_`` knew nothing of."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            fresh = starts_over(self)
            kept = None if fresh else self._fitted_state()
            try:
                return method(self, *args, **kwargs)
            except BaseException:  # an interrupted fit (Ctrl-C) is a failed one too
                if fresh:
                    self._forget_fit()
                else:
                    self._restore_fitted_state(kept)
                raise
        return wrapper
    return decorate


def _is_unfitted(estimator):
    """Whether ``estimator`` holds no fitted network (one, or the imputer's several)."""
    return not (hasattr(estimator, "network_weights_") or hasattr(estimator, "estimators_"))


def leaf_min_scale(leaf_scale):
    """The floor of the Normal leaves' scale (``NormalLeaf(min_scale=...)``): its default,
    0.01, or ``leaf_scale`` if smaller, so that a smaller requested scale (data in small
    units with ``standardize=None``) is not silently raised to the floor."""
    return min(1e-2, float(leaf_scale))


class BaseDGCSPN(BaseEstimator):
    """Base class; not for direct use."""

    #: scikit-learn estimator checks failed by design, ``{check name: reason}``.
    _expected_failed_checks: dict = {}

    #: Warn about the training data at fit (columns in different units, features never
    #: observed). The networks of an ensemble leave that to the ensemble, which warns once,
    #: with the caller's column names.
    _check_data = True

    _parameter_constraints: dict = {
        "image_shape": [None, "array-like"],
        "depth": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
        "sum_channels": _channels_constraint(),
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "kernel_size": [Interval(Integral, 2, None, closed="left"), "array-like"],
        "n_nonoverlapping": [Interval(Integral, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "standardize": [StrOptions({"sample", "feature"}), None],
        "leaf_scale": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    # ------------------------------------------------------------------ input
    def _validate_input(self, X, reset):
        """Validate ``X`` and return it as images ``[n, H, W, C]`` (float64, NaN kept).

        Accepts 2-D ``(n_samples, n_features)`` arrays or DataFrames, and 3-D / 4-D image
        arrays ``(n, H, W)`` / ``(n, H, W, C)``. The values keep their precision until they
        are standardised (``_scale``), so observed values can be returned bit for bit and
        large offsets do not swallow small variations.
        """
        nd_shape = None
        X = _images_from_list(X)
        if hasattr(X, "ndim") and getattr(X, "ndim", 2) > 2 and not hasattr(X, "columns"):
            X = np.asarray(X)
            if X.ndim > 4:
                raise ValueError(f"X must be 2-D, 3-D (n, H, W) or 4-D (n, H, W, C); "
                                 f"got an array of shape {X.shape}")
            if X.shape[0] == 0:
                raise ValueError(f"Found an array of 0 images (shape={X.shape}) while a "
                                 "minimum of 1 is required")
            nd_shape = X.shape[1:]
            X = X.reshape(X.shape[0], -1)
        try:
            X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32],
                              ensure_all_finite="allow-nan", ensure_min_samples=1)
        except ValueError as exc:
            if "infinity" not in str(exc):
                raise
            # Say what to do: infinity is not a missing-value marker here, NaN is.
            raise ValueError(f"{exc}; use NaN for missing values") from None
        with np.errstate(invalid="ignore"):
            too_large = np.abs(X) > np.finfo(np.float32).max
        if too_large.any():
            raise ValueError(f"X contains values of magnitude up to {np.nanmax(np.abs(X)):.3g}, "
                             f"beyond float32 ({np.finfo(np.float32).max:.3g}), the precision "
                             "of the network; rescale X")
        if reset and np.isnan(X).all():
            raise ValueError("X has no observed (non-NaN) values to fit on")
        if reset:
            self.image_shape_ = self._resolve_image_shape(X.shape[1], nd_shape)
        elif nd_shape is not None:
            # (n, H, W) arrays are grey images: a colour model takes (n, H, W, C) only.
            if _with_channel_axis(nd_shape) != tuple(self.image_shape_):
                raise ValueError(f"X has images of shape {nd_shape}, but this estimator was "
                                 f"fitted on images of shape {self.image_shape_}")
        return X.reshape((X.shape[0],) + self.image_shape_).astype(np.float64)

    def _resolve_image_shape(self, n_features, nd_shape):
        if self.image_shape is not None:
            shape = _with_channel_axis(_integers("image_shape", self.image_shape))
            if len(shape) != 3 or any(s < 1 for s in shape):
                raise ValueError(f"image_shape must be (H, W) or (H, W, C) of positive ints, "
                                 f"got {self.image_shape}")
            if int(np.prod(shape)) != n_features:
                raise ValueError(f"image_shape={self.image_shape} holds {int(np.prod(shape))} "
                                 f"values, but X has {n_features} features per sample")
            if nd_shape is not None and _with_channel_axis(nd_shape) != shape:
                raise ValueError(f"image_shape={self.image_shape} disagrees with the images "
                                 f"of X, of shape {tuple(nd_shape)}; pass 2-D X or drop "
                                 "image_shape")
            _warn_if_channels_first(shape)
            return shape
        if nd_shape is not None:
            shape = _with_channel_axis(nd_shape)
            _warn_if_channels_first(shape)
            return shape
        side = math.isqrt(n_features)
        if side * side == n_features:
            return (side, side, 1)
        return (1, n_features, 1)

    def _check_fitted(self):
        """Fitted, and the parameters that queries read (``standardize``, ``batch_size``,
        ...: a set_params after fit takes effect at the next query) valid."""
        check_is_fitted(self, "network_weights_")
        self._validate_params()

    # ------------------------------------------------------------------ scaling
    def _standardize_mode(self):
        return self.standardize

    def _fit_scaler(self, images):
        """Per-feature statistics for ``standardize='feature'``; typical per-sample ones
        for rows that ``standardize='sample'`` cannot scale by their own."""
        # A refit with another setting must not leave an earlier fit's statistics behind:
        # switching to 'feature' after it would scale with them.
        self.__dict__.pop("feature_mean_", None)
        self.__dict__.pop("feature_scale_", None)
        if self._check_data:
            self._warn_about_data(images)
        # Kept for every setting: 'sample' has no other fitted state, so a set_params to it
        # after fit stays valid.
        mean, std, usable = self._row_statistics(images)
        self.typical_mean_ = float(np.median(mean[usable])) if usable.any() else 0.0
        self.typical_scale_ = float(np.median(std[usable])) if usable.any() else 1.0
        if self._standardize_mode() == "feature":
            # An all-NaN feature gets mean 0 and scale 1.
            mean, std, count = _observed_mean_std(images, axis=0)
            std = np.where(_has_spread(mean, std, count), std, 1.0)
            self.feature_mean_, self.feature_scale_ = mean, std

    def _warn_about_data(self, images):
        """Warnings about the training data, once per fit (see ``_check_data``)."""
        if self._standardize_mode() == "sample":
            self._warn_if_mixed_units(images)

    def _warn_if_mixed_units(self, images):
        """Warn when ``'sample'`` standardisation meets features in different units."""
        # One mean and scale per row suit images, whose pixels share one unit: the largest
        # pixel standard deviation is 1.7-9.4 times the lower quartile's on digits, MNIST,
        # Fashion-MNIST and Olivetti. Tabular columns in different units (wine: 550,
        # breast cancer: 32000, age and income: 1000) make the row's scale that of its
        # largest columns, and imputed values came out hundreds of standard deviations
        # off. The lower quartile, not the median, catches two columns, or half of them
        # large (the median of [1, 1e5] is their mean).
        n_features = int(np.prod(images.shape[1:]))
        if n_features <= 2:
            # A row's own mean and scale from one or two values: one feature is left
            # unscaled, two are mapped to -1 / +1, and what is left is mostly noise.
            warnings.warn(
                f"standardize='sample' scales each row by the mean and standard deviation "
                f"of its own features, which needs many features per row (images); with "
                f"{n_features} it removes most of the information: use "
                f"standardize='feature'.", UserWarning, stacklevel=_caller_stacklevel())
            return
        rows = np.unique(np.linspace(0, len(images) - 1, min(len(images), MIXED_UNITS_ROWS))
                         .astype(int))  # spread over the data, which may be sorted
        _, std, count = _observed_mean_std(images[rows].reshape(len(rows), -1), axis=0)
        std = std[(count > 1) & (std > 0)]
        if std.size < 2:
            return
        ratio = std.max() / np.percentile(std, 25, method="lower")
        if ratio > MIXED_UNITS_RATIO:
            warnings.warn(
                f"standardize='sample' scales each row by one mean and standard deviation "
                f"over all its features, which suits images (one unit for every pixel); "
                f"a quarter of X's features vary {ratio:.0f} times less than the most "
                f"varying one (standard deviations), as columns in different units do. "
                f"For such data use standardize='feature'.", UserWarning,
                stacklevel=_caller_stacklevel())

    @staticmethod
    def _row_statistics(images):
        """Mean and standard deviation of each row's observed values (float64), and
        whether they can scale it: at least one observed value and a standard deviation
        above its round-off."""
        mean, std, count = _observed_mean_std(images.reshape(len(images), -1), axis=1)
        return mean, std, (count > 0) & _has_spread(mean, std, count)

    def _log_jacobian(self, images, scale):
        """``-sum log scale`` over the observed entries of each row: what turns a density
        of the standardised values into one of ``X`` (0 unless ``'feature'``)."""
        if self._standardize_mode() != "feature":
            return np.zeros(len(images))
        log_scale = np.broadcast_to(np.log(scale), images.shape)
        return -np.where(np.isnan(images), 0.0, log_scale).reshape(len(images), -1).sum(axis=1)

    def _check_feature_scaler(self):
        if not hasattr(self, "feature_mean_"):
            raise ValueError(
                "standardize='feature' needs the per-feature statistics of a fit with "
                "standardize='feature'; this estimator was fitted with "
                "another setting (set_params after fit): fit it again")

    def _scale(self, images):
        """Standardise; returns ``(z, offset, scale)`` with ``images = z * scale + offset``."""
        mode = self._standardize_mode()
        if mode == "feature":
            self._check_feature_scaler()
            offset, scale = self.feature_mean_[None], self.feature_scale_[None]
        elif mode == "sample":
            mean, std, usable = self._row_statistics(images)
            # A row with no observed value, or only equal ones (a single one, a blank
            # half), has no scale of its own: it takes the training rows' typical mean and
            # scale, so its values mean what they mean in a typical row and its completion
            # comes back on X's scale.
            mean = np.where(usable, mean, self.typical_mean_)
            std = np.where(usable, std, self.typical_scale_)
            offset, scale = mean.reshape(-1, 1, 1, 1), std.reshape(-1, 1, 1, 1)
        else:
            return images.astype(np.float32), 0.0, 1.0
        # In float64, so that X and a * X + b give the same z (float32 statistics rounded
        # differently, and hard EM amplified that into different models).
        z = ((images - offset) / scale).astype(np.float32)
        return z, offset, scale

    # ------------------------------------------------------------------ network
    def _plan(self, first_product):
        from ..core.scopes import plan_products

        h, w, _ = self.image_shape_
        kernel = self._kernel()
        try:
            products = plan_products((h, w), self.depth, kernel,
                                     self.n_nonoverlapping, first_product,
                                     ONE_HOT_MAX_CHANNELS)
        except ValueError as exc:
            raise ValueError(f"invalid architecture for image_shape {self.image_shape_}: "
                             f"{exc}") from None
        n_sums = max(len(products) - 1, 0)
        channels = self.sum_channels
        if np.ndim(channels) == 0:
            channels = [int(channels)] * n_sums
        else:
            channels = _integers("sum_channels", channels)
            if not channels:
                raise ValueError("sum_channels must not be empty")
            # A shorter list is extended with its last value, so a grid over depth works
            # with one sum_channels setting.
            channels = (channels + [channels[-1]] * n_sums)[:n_sums]
            if any(c < 1 for c in channels):
                raise ValueError(f"sum_channels must be positive, got {self.sum_channels}")
        return products, channels

    def _check_network_size(self, n_samples):
        """Refuse a network whose largest activation, for a training batch of ``n_samples``
        (per replica under a ``tf.distribute`` strategy), or whose weights would not fit
        in this machine's memory: TensorFlow failed with a memory error and a graph trace,
        or the process was killed (``n_components=10**6`` on digits). A bound that cannot
        be met, not an estimate of what fits: several such tensors live at once."""
        from ..core.network import layer_sizes

        memory = _physical_memory()
        if memory is None:
            return
        products, channels = self._plan(self.first_product)
        h, w, c = self.image_shape_
        classes = getattr(self, "classes_", None)  # the classifier's, set before this
        sizes = layer_sizes((h, w), self.n_components, products, channels,
                            None if classes is None else len(classes))
        batch = self._training_batch(n_samples)
        strategy = getattr(self, "_strategy", None)
        if strategy is not None:
            batch = -(-batch // strategy.num_replicas_in_sync)
        name, per_sample, _ = max(sizes, key=lambda size: size[1])
        if 4 * per_sample * batch > memory:  # float32
            raise ValueError(
                f"the network's layer {name} would hold {per_sample * batch:,} values "
                f"({4 * per_sample * batch / 2**30:,.0f} GiB) for a batch of {batch} samples, "
                f"more than this machine's memory ({memory / 2**30:,.0f} GiB); lower "
                f"batch_size, n_components or sum_channels")
        n_weights = sum(size[2] for size in sizes) + 2 * h * w * c * self.n_components
        if 4 * n_weights > memory:
            raise ValueError(f"the network would have {n_weights:,} weights "
                             f"({4 * n_weights / 2**30:,.0f} GiB), more than this machine's "
                             f"memory ({memory / 2**30:,.0f} GiB); lower n_components or "
                             f"sum_channels")

    def _kernel(self):
        """``kernel_size`` for the planner: an int, or (height, width)."""
        if np.ndim(self.kernel_size) == 0:
            return int(self.kernel_size)
        kernel = tuple(_integers("kernel_size", self.kernel_size))
        if len(kernel) != 2 or min(kernel) < 2:
            raise ValueError(f"kernel_size must be an int >= 2 or (height, width) of ints "
                             f">= 2, got {self.kernel_size!r}")
        return kernel

    def _build_network(self, leaf, products, channels, n_classes, log_space, seed):
        from ..core.network import DGCSPN

        return DGCSPN(self.image_shape_[:2], leaf, products, channels, n_classes=n_classes,
                      log_space=log_space, seed=seed)

    # ------------------------------------------------------------------ batches
    @staticmethod
    def _padded_batches(n, batch_size):
        """Yield ``(start, stop, padded_size)`` with the padded size a power of two (or the
        batch size), so compiled functions see few distinct shapes."""
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            size = stop - start
            padded = batch_size if size == batch_size else min(
                batch_size, 1 << (size - 1).bit_length())
            yield start, stop, padded

    def _training_batch(self, n):
        """The padded size of every training batch over ``n`` samples: ``batch_size``, or
        for fewer samples the power of two a query would pad them to (so a huge
        ``batch_size`` costs no more than the data)."""
        return self.batch_size if n >= self.batch_size else 1 << (n - 1).bit_length()

    @staticmethod
    def _pad(array, size, value=np.nan):
        if len(array) == size:
            return array
        pad = np.full((size - len(array),) + array.shape[1:], value, dtype=array.dtype)
        return np.concatenate([array, pad])

    def _map_batches(self, fn, images, batch_size=None):
        """Apply ``fn(batch, start)`` to padded batches of ``images`` (``start``: the index
        of the batch's first row) and concatenate the results."""
        batch_size = batch_size or self.batch_size
        out = []
        for start, stop, padded in self._padded_batches(len(images), batch_size):
            res = fn(self._pad(images[start:stop], padded), start)
            out.append(np.asarray(res)[:stop - start])
        return np.concatenate(out)

    # ------------------------------------------------------------------ progress
    def _log_epoch(self, epoch, n_epochs, seconds, **metrics):
        if not self.verbose:
            return
        parts = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None)
        print(f"[{type(self).__name__}] epoch {epoch}/{n_epochs} {parts} ({seconds:.1f}s)",
              file=sys.stdout, flush=True)

    def _progress(self, done, total, start_time):
        """A one-line progress bar for long epochs (``verbose >= 1``)."""
        if not self.verbose or total < 20:
            return
        # Redrawn in place with \r: only on a terminal or in Jupyter (in a log file it
        # would be one long line).
        if not (sys.stdout.isatty() or type(sys.stdout).__module__.startswith("ipykernel")):
            return
        width = 30
        filled = int(width * done / total)
        elapsed = time.time() - start_time
        sys.stdout.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                         f"batches {elapsed:.0f}s")
        if done == total:
            sys.stdout.write("\n")
        sys.stdout.flush()

    # ------------------------------------------------------------------ seeds
    @staticmethod
    def _seed_pair(rng):
        """A stateless TensorFlow seed ``[2]`` drawn from a numpy ``RandomState``."""
        return rng.randint(0, 2**31 - 1, size=2).astype(np.int64)

    # ------------------------------------------------------------------ distribution
    def _setup_distribution(self, images):
        """Pick up the surrounding ``tf.distribute`` strategy for a new fit.

        ``None`` outside any ``strategy.scope()``: one device, no overhead. Across workers
        (``MultiWorkerMirroredStrategy``) every worker must be given the same ``X``: the
        global batches are drawn identically on every worker and each replica trains on
        its rows, so the workers' data are compared and their random streams joined first.
        """
        from ..core.distribute import current_strategy, gather_across_replicas, is_multi_worker

        self._strategy = current_strategy()
        if is_multi_worker(self._strategy):
            # The first draw of each worker's random stream, without consuming it: a
            # random_state that already agrees leaves the stream as on one device.
            probe = np.random.RandomState()
            probe.set_state(self._rng.get_state())
            fingerprint = [len(images), float(np.nansum(images, dtype=np.float64)),
                           float(np.isnan(images).sum()), probe.randint(0, 2**31 - 1)]
            table = gather_across_replicas(self._strategy, fingerprint)
            low, high = table.min(axis=0), table.max(axis=0)
            if np.any(low[:3] != high[:3]):
                raise ValueError(
                    "multi-worker training needs the same X on every worker (each replica "
                    "trains on its share of every global batch); the workers' X differ "
                    f"(n_samples from {int(low[0])} to {int(high[0])}, sum of values from "
                    f"{low[1]:.6g} to {high[1]:.6g})")
            if low[3] != high[3]:  # e.g. random_state=None: use the first worker's stream
                self._rng = np.random.RandomState(int(table[0, 3]))

    def _distribution_scope(self):
        from ..core.distribute import scope

        return scope(getattr(self, "_strategy", None))

    #: Parameters the network's layers and stored weights depend on (``leaf_scale``: the
    #: Normal leaves' floor, ``leaf_min_scale``), kept from the fit for rebuilding it.
    _architecture_parameters = ("depth", "sum_channels", "n_components", "leaf",
                                "kernel_size", "first_product", "n_nonoverlapping", "learning",
                                "leaf_scale")

    def _architecture(self):
        """The network's architecture as planned from the current parameters."""
        products, channels = self._plan(self.first_product)
        return {"depth / kernel_size / n_nonoverlapping / first_product": products,
                "sum_channels": channels, "n_components": self.n_components,
                "leaf": getattr(self, "leaf", "normal"),
                "learning (log-weights or counts)": self._learns_by_gradient()}

    def _remember_architecture(self):
        self._fitted_parameters = {name: getattr(self, name)
                                   for name in self._architecture_parameters
                                   if hasattr(self, name)}

    @contextlib.contextmanager
    def _as_fitted(self):
        """The architecture parameters temporarily set back to the fitted ones."""
        fitted = getattr(self, "_fitted_parameters", {})
        current = {name: getattr(self, name) for name in fitted}
        self.__dict__.update(fitted)
        try:
            yield
        finally:
            self.__dict__.update(current)

    def _fitted_parameter(self, name):
        """The value parameter ``name`` had at fit (its current value before a fit)."""
        return getattr(self, "_fitted_parameters", {}).get(name, getattr(self, name))

    def _check_architecture(self):
        """Refuse to keep training the fitted network after set_params changed its
        architecture (its weights would not fit, or fit silently wrongly)."""
        if not hasattr(self, "_fitted_parameters"):
            return
        current = self._architecture()
        with self._as_fitted():
            fitted = self._architecture()
        changed = [name for name in current if current[name] != fitted[name]]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} changed by set_params since this "
                f"{type(self).__name__} was fitted; a fitted network keeps its architecture: "
                "fit again (without warm_start) or set the parameters back")

    def _rebuild_network(self, strategy):
        """The network from the fitted weights, under ``strategy``; ops and learner reset.

        Built with the parameters it was fitted with, so that queries of an unpickled
        estimator answer as the live one does after a set_params (with the fitted model).
        """
        from ..core.distribute import scope

        with self._as_fitted(), scope(strategy):
            network = self._make_network()
            network.set_weights(self.network_weights_)
        # Stored only once it holds the fitted weights: a build interrupted between the two
        # (Ctrl-C in the first query of an unpickled model) left a network with its initial
        # weights, which every later query, and the next pickle, then used.
        self._network, self._strategy, self._ops, self._learner = network, strategy, None, None

    def _training_runtime(self, **learner_kwargs):
        """Network and learner to continue training (warm start, ``partial_fit``).

        They are rebuilt from the fitted weights (and optimiser state) when the surrounding
        strategy differs from the one they were built under, e.g. a model fitted under
        ``MirroredStrategy`` and updated on one device, or an unpickled one.
        """
        from ..core.distribute import current_strategy

        self._check_architecture()
        strategy = current_strategy()
        if getattr(self, "_network", None) is None or strategy is not getattr(
                self, "_strategy", None):
            learner = getattr(self, "_learner", None)
            if learner is not None and hasattr(learner, "optimizer"):
                self._optimizer_state = learner.optimizer.get_state()
            self._rebuild_network(strategy)
        if getattr(self, "_learner", None) is None:
            self._learner = self._make_learner(**learner_kwargs)
        if hasattr(self._learner, "optimizer"):
            # set_params(learning_rate=...) between calls takes effect (a decay schedule in
            # a partial_fit loop), as it does for a rebuilt (unpickled) learner; the
            # optimiser's moments carry over.
            self._learner.optimizer.learning_rate.assign(self.learning_rate)
        return self._learner

    # ------------------------------------------------------------------ pickling
    _runtime_attributes = ("_network", "_learner", "_ops", "_strategy")

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in self._runtime_attributes}
        if getattr(self, "_network", None) is not None and hasattr(self, "network_weights_"):
            state["network_weights_"] = self._network.get_weights()
            learner = getattr(self, "_learner", None)
            if learner is not None and hasattr(learner, "optimizer"):
                state["_optimizer_state"] = learner.optimizer.get_state()
        state[_STATE_VERSION_KEY] = __version__
        return state

    def __setstate__(self, state):
        version = state.pop(_STATE_VERSION_KEY, None)
        if version is None or not _compatible(version, __version__):
            raise ValueError(
                f"this {type(self).__name__} was pickled by skspn {version or 'unknown'}, "
                f"which is incompatible with the installed skspn {__version__}; refit it or "
                f"load it with skspn {version}")
        self.__dict__.update(state)

    def _runtime(self):
        """The TensorFlow network of a fitted (or unpickled) estimator, built on demand."""
        if getattr(self, "_network", None) is None:
            self._rebuild_network(None)
        return self._network

    def _make_ops(self):
        from ..core.learning import CompiledOps

        return CompiledOps(self._network)

    def _get_ops(self):
        """Compiled inference ops (built with the network; rebuilt after unpickling)."""
        self._runtime()
        ops = getattr(self, "_ops", None)
        if ops is None:
            ops = self._ops = self._make_ops()
        return ops

    def _fitted_attribute_names(self):
        """The trailing-underscore attributes set by fitting."""
        return [name for name in vars(self) if name.endswith("_") and not name.startswith("__")]

    def _drop_runtime(self):
        """Drop the TensorFlow network, learner and ops; ``_runtime`` rebuilds them from
        ``network_weights_`` on demand."""
        for name in self._runtime_attributes:
            self.__dict__.pop(name, None)

    def _fitted_state(self):
        """The fitted attributes (lists copied, and the lists of a dict such as the
        classifier's ``history_``: epochs append to them) and, for an ensemble, those of
        its networks; what ``_restore_fitted_state`` puts back."""
        def copied(value):
            if isinstance(value, list):
                return list(value)
            if isinstance(value, dict):
                return {key: copied(item) for key, item in value.items()}
            return value

        attributes = {name: copied(getattr(self, name))
                      for name in self._fitted_attribute_names()}
        return attributes, [e._fitted_state() for e in attributes.get("estimators_", [])]

    def _restore_fitted_state(self, state):
        """Back to ``state`` after a failed continued fit; the runtime is rebuilt from
        ``network_weights_`` on demand."""
        attributes, networks = state
        for estimator, network_state in zip(attributes.get("estimators_", []), networks):
            estimator._restore_fitted_state(network_state)
        learner = getattr(self, "_learner", None)
        if learner is not None and hasattr(learner, "optimizer"):
            # Adam's moments as they are (copying them before every call would cost more
            # than a small partial_fit): optimiser internals, not the model.
            self._optimizer_state = learner.optimizer.get_state()
        for name in self._fitted_attribute_names():
            delattr(self, name)
        self.__dict__.update(attributes)
        self._drop_runtime()

    def _forget_fit(self):
        """Drop all fitted state (trailing-underscore attributes and the runtime)."""
        for name in self._fitted_attribute_names():
            delattr(self, name)
        self._drop_runtime()
        for name in ("_rng", "_optimizer_state", "_fitted_parameters"):
            self.__dict__.pop(name, None)

    def _check_finite_training(self, value, name):
        """Raise if an epoch left a non-finite ``value`` (loss or log-likelihood) or
        non-finite weights, instead of returning NaN predictions later. The diverged
        network is dropped, and its learner with it, whose moments are not to be kept
        (``_restore_fitted_state``): the estimator keeps its last finite state (if it had
        one)."""
        if np.isfinite(value) and all(np.isfinite(w).all() for w in self._network.get_weights()):
            return
        self._drop_runtime()
        hint = (f"lower learning_rate (now {self.learning_rate})"
                if self._learns_by_gradient() else "check X for extreme values")
        if self._learns_by_gradient() and self._standardize_mode() is None:
            hint += " or check X for extreme values (standardize=None leaves X unscaled)"
        what = f"the {name} became {value}" if not np.isfinite(value) else (
            "the weights became non-finite")
        raise ValueError(f"training diverged: {what}; {hint}")

    def _learns_by_gradient(self):
        return True

    def _sync_weights(self):
        """Keep the numpy copy of the weights current (it is what marks us fitted)."""
        self.network_weights_ = self._network.get_weights()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
