"""Leaf layers: K univariate components per pixel (Normal, Bernoulli, Categorical).

Internal layout is cells-major: inputs arrive as ``[H, W, B, n_colors]`` and log-probs
leave as ``[H, W, B, K]``. A missing value (NaN) contributes log-prob 0 to every
component of its pixel: that is exact marginalisation of the variable. Multi-channel
pixels (RGB) take a product over the colour channels per component, so a cell's scope is
the whole pixel.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from . import keyed_random

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Cap of a Normal leaf's |x - loc|, in units of its smallest possible scale: z**2 / 2 summed
# over 1e6 pixels stays finite in float32.
_MAX_Z = 1e15


def quantile_means(images: np.ndarray, n_components: int) -> np.ndarray:
    """Per-pixel quantile means (Poon & Domingos): sort each pixel's training values,
    split them into ``n_components`` equal groups and take each group's mean.

    Parameters
    ----------
    images : ndarray of shape (n_samples, H, W, n_colors)
        Training data; NaN entries are ignored.

    Returns
    -------
    means : ndarray of shape (H, W, n_colors, n_components)
    """
    x = np.sort(np.asarray(images, dtype=np.float64), axis=0)  # NaN sort last
    n_valid = np.sum(~np.isnan(x), axis=0)  # [H, W, C]
    n = x.shape[0]
    rank = np.arange(n)[:, None, None, None]
    # Component of each sorted value: floor(rank * K / n_valid); NaN rows get K (dropped).
    comp = np.where(rank < n_valid, (rank * n_components) // np.maximum(n_valid, 1),
                    n_components)
    means = np.zeros(x.shape[1:] + (n_components,))
    for k in range(n_components):  # K is small; the pixel axes stay vectorised
        sel = comp == k
        cnt = sel.sum(axis=0)
        tot = np.where(sel, np.nan_to_num(x), 0.0).sum(axis=0)
        means[..., k] = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)
    # Pixels with fewer valid values than components (or none): fall back to the
    # pixel's mean, then to 0, so every component has a finite mean.
    pixel_mean = np.where(n_valid > 0, np.nansum(x, axis=0) / np.maximum(n_valid, 1), 0.0)
    means = np.where(np.isnan(means), pixel_mean[..., None], means)
    return means.astype(np.float32)


def component_means(images: np.ndarray, n_components: int, n_iter: int = 20,
                    max_samples: int = 1000) -> np.ndarray:
    """Initial (and, under EM, fixed) means of the Normal leaves' components.

    One colour: ``quantile_means`` (the paper's). Several colours: a component is a
    product over the colours of one pixel, so quantile means, taken per colour, pair the
    k-th quantile of every colour and cannot express colours that are bright in one
    channel and dark in another (a review's red or blue digits were completed and sampled
    purple). Instead, a k-means of each pixel's colour vectors (Lloyd iterations started
    from the quantile means, over at most ``max_samples`` images, missing channels left
    out of the distances and the means), so that each component is a colour of the data.
    ``images`` and the returned means are shaped as for ``quantile_means``; ``n_iter``
    bounds the Lloyd iterations (they stop earlier once the means stay put).
    """
    means = quantile_means(images, n_components)
    if images.shape[-1] == 1 or n_components == 1:
        return means
    rng = np.random.default_rng(0)  # deterministic, as the quantile means
    rows = (np.sort(rng.choice(len(images), max_samples, replace=False))
            if len(images) > max_samples else slice(None))
    x = np.asarray(images[rows], dtype=np.float32)  # [n, H, W, C]
    observed = ~np.isnan(x)
    x = np.where(observed, x, 0.0)
    has_colour = observed.any(axis=-1)  # [n, H, W]: some channel observed
    centres = np.moveaxis(means, -1, -2).copy()  # [H, W, K, C]
    for _ in range(n_iter):
        # Squared distances over the observed channels, [n, H, W, K].
        distance = np.einsum("nhwkc->nhwk", observed[..., None, :]
                             * (x[..., None, :] - centres[None]) ** 2)
        nearest = np.argmin(distance, axis=-1)
        member = (nearest[..., None] == np.arange(n_components)) & has_colour[..., None]
        member = member.astype(np.float32)
        total = np.einsum("nhwk,nhwc->hwkc", member, x)
        count = np.einsum("nhwk,nhwc->hwkc", member, observed.astype(np.float32))
        updated = np.where(count > 0, total / np.maximum(count, 1.0), centres)
        # A component no image chose (equal quantile means start so) moves to the
        # colour farthest from its centre, one per pixel and iteration.
        empty = member.sum(axis=0) == 0  # [H, W, K]
        if empty.any():
            own = np.where(has_colour, np.min(distance, axis=-1), -1.0)  # [n, H, W]
            farthest = np.argmax(own, axis=0)  # [H, W]
            colour = np.take_along_axis(x, farthest[None, ..., None], axis=0)[0]  # [H, W, C]
            first_empty = np.argmax(empty, axis=-1)  # [H, W]
            reseed = empty & (np.arange(n_components) == first_empty[..., None])
            reseed &= (np.max(own, axis=0) > 0)[..., None]  # only where points differ
            updated = np.where(reseed[..., None], colour[:, :, None, :], updated)
        if np.allclose(updated, centres):
            break
        centres = updated
    return np.moveaxis(centres, -2, -1).astype(np.float32)


def bernoulli_logits(images, n_components: int) -> np.ndarray:
    """Initial logits of P(x = 1) ``[H, W, C, K]``: components spread over 0.02 ... 0.98,
    which the sums mix into any marginal; a single component is each pixel's own
    frequency of ones (add-one smoothed), since nothing could mix a fixed 0.5 into it."""
    x = np.asarray(images, dtype=np.float64)
    if n_components > 1:
        p = np.broadcast_to(np.linspace(0.02, 0.98, n_components), x.shape[1:] + (n_components,))
    else:
        p = ((x == 1).sum(axis=0) + 1.0) / ((~np.isnan(x)).sum(axis=0) + 2.0)
        p = p[..., None]
    return np.log(p / (1 - p)).astype(np.float32)


def categorical_logits(images, n_components: int, n_categories: int) -> np.ndarray:
    """Initial log-probabilities ``[H, W, C, K, n_categories]`` of Categorical leaves.

    Component ``k`` puts 0.9 of its mass on its own categories and spreads 0.1 evenly over
    the rest. With at most ``K`` categories its own is category ``k mod n``; with more,
    the codes are cut into ``K`` contiguous blocks (neighbouring codes together, which
    suits ordinal codes such as intensities) and a block's mass follows each pixel's
    frequencies of its codes (add-one smoothed). Every category is then probable under
    some component: EM keeps the leaves fixed, and a category without one could never be
    learned (with codes 0..7 and 4 components, codes 4..7 kept 1.4 % each).
    """
    x = np.asarray(images, dtype=np.float64)
    K, n = n_components, n_categories
    if n <= K:
        home = (np.arange(K) % n)[:, None] == np.arange(n)[None, :]  # [K, n]
    else:
        home = (np.arange(n)[None, :] * K) // n == np.arange(K)[:, None]
    # Per-pixel counts of each code in one bincount ([H, W, C, n]; NaN ignored), not one
    # pass over the data per category (256 passes took 12 s on MNIST).
    by_pixel = x.reshape(len(x), -1).T  # [pixels, samples]
    pixel, sample = np.nonzero(~np.isnan(by_pixel))
    codes = by_pixel[pixel, sample].astype(np.int64)
    counts = np.bincount(pixel * n + codes, minlength=by_pixel.shape[0] * n)
    counts = counts.reshape(x.shape[1:] + (n,)) + 1.0
    inside = np.where(home, counts[..., None, :], 0.0)  # [H, W, C, K, n]
    inside = 0.9 * inside / inside.sum(axis=-1, keepdims=True)
    n_outside = n - home.sum(axis=-1, keepdims=True)  # [K, 1]
    outside = np.where(home, 0.0, 0.1 / np.maximum(n_outside, 1))
    probs = inside + outside
    probs = probs / probs.sum(axis=-1, keepdims=True)  # n = 1: the 0.1 has nowhere to go
    return np.log(probs).astype(np.float32)


def equidistant_means(spatial_shape, n_colors: int, n_components: int, low: float,
                      high: float) -> np.ndarray:
    """Means spread evenly over ``[low, high]`` along the component axis of every pixel.

    Returns
    -------
    means : ndarray of shape (H, W, n_colors, n_components)
    """
    grid = np.linspace(low, high, n_components, dtype=np.float32)
    return np.broadcast_to(grid, tuple(spatial_shape) + (n_colors, n_components)).copy()


def _parameter_array(value, ndim, what, shape):
    """``value`` as a float32 array of ``ndim`` dimensions, else a ValueError."""
    value = np.asarray(value, dtype=np.float32)
    if value.ndim != ndim:
        raise ValueError(f"{what} must have shape {shape}, got an array of shape {value.shape}")
    return value


class Leaf(tf.Module):
    """Base class. Subclasses define ``component_log_prob`` and the completions.

    Values outside a discrete leaf's domain (not 0 / 1, or not a code below
    ``n_categories``) are not checked here; the estimators refuse them.
    """

    n_components: int
    discrete: bool = False
    spatial_shape: tuple  # (H, W) of the image the leaf's parameters cover

    def log_prob(self, x: tf.Tensor, hidden: str = "marginal") -> tf.Tensor:
        """Per-component log-probabilities of ``x`` ``[H, W, B, n_colors]`` -> ``[H, W, B, K]``.

        NaN entries are marginalised (log-prob 0), or with ``hidden='max'`` maximised: each
        component's largest log-density (``max_log_prob``), the leaves of the max-product
        network that the MPE completion routes on.
        """
        if hidden not in ("marginal", "max"):
            raise ValueError(f"hidden must be 'marginal' or 'max', got {hidden!r}")
        missing = tf.math.is_nan(x)
        x_filled = tf.where(missing, tf.zeros_like(x), x)
        lp = self.component_log_prob(x_filled)  # [H, W, B, n_colors, K]
        at_hidden = (tf.zeros_like(lp) if hidden == "marginal"
                     else tf.broadcast_to(self.max_log_prob(), tf.shape(lp)))
        lp = tf.where(missing[..., None], at_hidden, lp)
        return tf.reduce_sum(lp, axis=-2)

    def max_log_prob(self) -> tf.Tensor:
        """Each component's largest log-density, at its mode: ``[H, W, 1, n_colors, K]``."""
        raise NotImplementedError

    def marginal_completion(self, posterior: tf.Tensor) -> tf.Tensor:
        """Posterior-marginal completion: ``[H, W, B, K]`` posteriors -> ``[H, W, B, n_colors]``;
        the mean of each entry's posterior marginal (Normal leaves) or its most probable
        value (discrete leaves)."""
        raise NotImplementedError

    def mode(self, selection: tf.Tensor) -> tf.Tensor:
        """Value of the selected component's mode; ``selection`` is one-hot ``[H, W, B, K]``."""
        raise NotImplementedError

    def predictive(self, posterior: tf.Tensor) -> tf.Tensor:
        """Discrete leaves: each entry's posterior marginal over its values,
        ``[H, W, B, K]`` posteriors -> ``[H, W, B, n_colors, n_values]``."""
        raise NotImplementedError(f"{type(self).__name__} is not discrete")

    def sample(self, selection: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
        """A draw from the selected component; ``selection`` is one-hot ``[H, W, B, K]``.

        ``keys`` ``[B]`` (``keyed_random.sample_keys``) key each sample's draws, so they do
        not depend on the other samples of the batch.
        """
        raise NotImplementedError


class NormalLeaf(Leaf):
    """Univariate Normal components.

    Parameters
    ----------
    loc : array of shape (H, W, n_colors, K)
    scale : float or array broadcastable to ``loc``
    trainable : bool
        Whether ``loc`` and ``log_scale`` are trained by gradient learning.
    min_scale : float
        Lower bound on the scale, keeping densities finite when trained.
    """

    def __init__(self, loc, scale=1.0, trainable=False, min_scale=1e-2, name="normal_leaf"):
        super().__init__(name=name)
        loc = _parameter_array(loc, 4, "loc", "(H, W, n_colors, K)")
        if not float(min_scale) > 0:
            raise ValueError(f"min_scale must be positive, got {min_scale!r}")
        if not np.all(np.asarray(scale) > 0):
            raise ValueError("scale must be positive")
        self.spatial_shape = loc.shape[:2]
        self.n_components = loc.shape[-1]
        self.n_colors = loc.shape[-2]
        self.min_scale = float(min_scale)
        log_scale = np.log(np.maximum(np.broadcast_to(np.asarray(scale, np.float32), loc.shape),
                                      self.min_scale) - 0.99 * self.min_scale)
        # Stored cells-major [H, W, 1, n_colors, K] so they broadcast over the batch axis.
        self.loc = tf.Variable(loc[:, :, None], trainable=trainable, name="loc")
        self.log_scale = tf.Variable(log_scale[:, :, None].astype(np.float32),
                                     trainable=trainable, name="log_scale")

    @property
    def scale(self):
        # A floor keeps the density bounded when scales are trained.
        return tf.exp(self.log_scale) + 0.99 * self.min_scale

    def component_log_prob(self, x):
        scale = self.scale
        # Far out the square overflows float32 (to -inf log-probs, then NaN posteriors).
        # The distance is capped at _MAX_Z smallest possible scales, the same cap for
        # every component, so the wider one still explains an outlier better (and its
        # scale's gradient still grows); capping z instead made the narrowest one win.
        limit = _MAX_Z * self.min_scale
        distance = tf.clip_by_value(x[..., None] - self.loc, -limit, limit)
        return -0.5 * tf.square(distance / scale) - tf.math.log(scale) - _HALF_LOG_2PI

    def max_log_prob(self):
        return -tf.math.log(self.scale) - _HALF_LOG_2PI

    def marginal_completion(self, posterior):
        return tf.einsum("hwbk,hwck->hwbc", posterior, self.loc[:, :, 0])

    def mode(self, selection):
        return self.marginal_completion(selection)

    def sample(self, selection, keys):
        mean = self.mode(selection)
        std = tf.einsum("hwbk,hwck->hwbc", selection, self.scale[:, :, 0])
        normal = tf.math.ndtri(keyed_random.uniform(keys, tf.shape(mean), 2))
        return mean + std * normal


class BernoulliLeaf(Leaf):
    """Bernoulli components over {0, 1}; parameterised by logits of P(x = 1)."""

    discrete = True

    def __init__(self, logits, trainable=True, name="bernoulli_leaf"):
        super().__init__(name=name)
        logits = _parameter_array(logits, 4, "logits", "(H, W, n_colors, K)")
        self.spatial_shape = logits.shape[:2]
        self.n_components = logits.shape[-1]
        self.n_colors = logits.shape[-2]
        self.logits = tf.Variable(logits[:, :, None], trainable=trainable, name="logits")

    def component_log_prob(self, x):
        x = x[..., None]
        return x * tf.math.log_sigmoid(self.logits) + (1.0 - x) * tf.math.log_sigmoid(-self.logits)

    def max_log_prob(self):
        return tf.math.log_sigmoid(tf.abs(self.logits))

    def _p_one(self, posterior):
        return tf.einsum("hwbk,hwck->hwbc", posterior, tf.sigmoid(self.logits[:, :, 0]))

    def marginal_completion(self, posterior):
        # Marginal MAP per variable: the more probable value under the posterior mixture.
        return tf.cast(self._p_one(posterior) > 0.5, tf.float32)

    def predictive(self, posterior):
        p_one = self._p_one(posterior)
        return tf.stack([1.0 - p_one, p_one], axis=-1)

    def mode(self, selection):
        return self.marginal_completion(selection)

    def sample(self, selection, keys):
        p = self._p_one(selection)
        return tf.cast(keyed_random.uniform(keys, tf.shape(p), 2) < p, tf.float32)


class CategoricalLeaf(Leaf):
    """Categorical components over ``{0, ..., n_categories - 1}``."""

    discrete = True

    def __init__(self, logits, trainable=True, name="categorical_leaf"):
        super().__init__(name=name)
        logits = _parameter_array(logits, 5, "logits", "(H, W, n_colors, K, n_categories)")
        self.spatial_shape = logits.shape[:2]
        self.n_components = logits.shape[-2]
        self.n_colors = logits.shape[-3]
        self.n_categories = logits.shape[-1]
        self.logits = tf.Variable(logits[:, :, None], trainable=trainable, name="logits")

    def component_log_prob(self, x):
        log_p = tf.nn.log_softmax(self.logits, axis=-1)  # [H, W, 1, C, K, n]
        onehot = tf.one_hot(tf.cast(x, tf.int32), self.n_categories)  # [H, W, B, C, n]
        return tf.einsum("hwbcn,hwcKn->hwbcK", onehot, log_p[:, :, 0])

    def max_log_prob(self):
        return tf.reduce_max(tf.nn.log_softmax(self.logits, axis=-1), axis=-1)

    def predictive(self, posterior):
        p = tf.nn.softmax(self.logits[:, :, 0], axis=-1)  # [H, W, C, K, n]
        return tf.einsum("hwbk,hwckn->hwbcn", posterior, p)

    def marginal_completion(self, posterior):
        return tf.cast(tf.argmax(self.predictive(posterior), axis=-1), tf.float32)

    def mode(self, selection):
        return self.marginal_completion(selection)

    def sample(self, selection, keys):
        p = self.predictive(selection)  # [H, W, B, C, n]
        gumbel = -tf.math.log(-tf.math.log(keyed_random.uniform(keys, tf.shape(p), 2)))
        draw = tf.argmax(tf.math.log(p + 1e-30) + gumbel, axis=-1)
        return tf.cast(draw, tf.float32)
