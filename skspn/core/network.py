"""DGCSPN: the layer stack and its inference operations.

Every query is one forward pass, optionally followed by one backward pass through the
routing sum op (``sums.routed_sum``):

- marginal / joint log-likelihood: forward, NaN pixels marginalised;
- posteriors at the leaves: ``d log S / d log L`` with ``soft`` routing;
- posterior-marginal imputation: posteriors x component means;
- MPE completion: ``max`` routing, then the selected component's mode;
- sampling (conditional on the observed pixels): ``sample`` routing, then a draw from
  the selected component;
- EM counts: the gradient of ``sum log S`` with respect to the normalised log-weights,
  under ``hard``, ``hard_unweighted`` or ``soft`` routing.

Public tensors are batch-major: images ``[B, H, W, n_colors]``. Internally the layers work
cells-major ``[H, W, B, C]`` so that per-cell sums are plain batched matmuls.
"""

from __future__ import annotations

import functools
import weakref
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from . import keyed_random
from .leaves import Leaf
from .product_sum import product_of, product_sum, to_log_values
from .products import XLA_MIN_PIXELS, Product, product_channels, tracing_for_xla
from .scopes import ProductSpec, resolve
from .sums import LOG_ZERO, READS_LOG_WEIGHTS, SOFT_ROUTINGS, SpatialSum, routed_sum

#: Salt of the leaf draws of ``complete(method='sample')``; the layers' streams are their
#: index, 500 / 501 (top sums), 1000 (input dropout) and 2000 + index (product dropout).
_LEAF_STREAM = 1_000_000


class NormalisedWeights(NamedTuple):
    """Every sum layer's normalised weights (``DGCSPN.weight_layers`` order), as logs and
    as they are.

    Normalising the accumulators and exponentiating them again is a handful of passes over
    every weight: on the MNIST classifier (5M weights) 7-11 ms, a third of its forward pass
    at batch 64. A query over many batches takes them once (``DGCSPN.normalised_weights``)
    and gives them to every batch; training steps form them from the accumulators
    themselves, which they differentiate.
    """

    log: list  # of Tensor [N | 1, C_in, C_out]
    linear: list  # exp(log)
    log_min: list  # of Tensor [N | 1, C_out]: each sum's smallest log-weight (over C_in)


def _keep_mask_impl(like, keys, rate):
    return _keep_mask_of_shape(tf.shape(like), keys, rate)


def _sized_keep_mask_impl(keys, rate, cell_shape):  # cell_shape (H, W, C): Python ints
    h, w, c = cell_shape
    return _keep_mask_of_shape(tf.stack([h, w, tf.shape(keys)[0], c]), keys, rate)


def _sized_keep_mask(product, keys, rate):
    """``_keep_mask`` of product ``product``'s outputs ``[H_out, W_out, B, C]``, made from
    their shape (a fused layer never writes them): one compiled function per product (a
    shape XLA knows; a partial, so that TensorFlow's retracing warning counts each apart)."""
    fn = _SIZED_KEEP_MASKS.get(product)
    if fn is None:
        fn = _SIZED_KEEP_MASKS[product] = tf.function(
            functools.partial(_sized_keep_mask_impl,
                              cell_shape=tuple(product.out_shape) + (product.out_channels,)),
            jit_compile=True, autograph=False)
    return fn(keys, tf.constant(rate, tf.float32))


def _keep_mask_of_shape(shape, keys, rate):  # shape [H, W, B, ...]: samples on axis 2
    return keyed_random.uniform(keys, shape, 2) >= rate


# A dropout mask is a hash per element (int64 xor-shift / multiply rounds). Compiled, the
# rounds run as one pass: the 14x14xBx128 mask of the MNIST classifier (batch 128) takes
# 8 ms against 48 ms as separate TensorFlow ops.
_keep_mask = tf.function(_keep_mask_impl, jit_compile=True, autograph=False)
_SIZED_KEEP_MASKS = weakref.WeakKeyDictionary()


def layer_sizes(spatial_shape, n_components, products, sum_channels, n_classes=None):
    """``(layer name, values per sample, weights)`` of every layer of the network that
    ``DGCSPN(spatial_shape, leaf with n_components, products, sum_channels, n_classes)``
    builds (its unshared sums; the leaves' own parameters are not counted), computed
    without building it (to refuse sizes that cannot be allocated)."""
    report = resolve(tuple(int(n) for n in spatial_shape), products)
    sizes = [("leaves", int(np.prod(spatial_shape)) * int(n_components), 0)]
    channels = int(n_components)
    for i, rp in enumerate(report.products):
        channels = product_channels(rp, channels)
        n_cells = int(np.prod(rp.out_shape))
        sizes.append((f"product_{i}", n_cells * channels, 0))
        if i < len(report.products) - 1:
            out = int(sum_channels[i])
            sizes.append((f"sum_{i}", n_cells * out, n_cells * channels * out))
            channels = out
    # The top sums mix the full-scope top cells' channels (as ``DGCSPN.top``).
    n_out = int(n_classes or 1)
    sizes.append(("class_sums" if n_classes else "root", n_out,
                  report.n_top_cells * channels * n_out))
    if n_classes:
        sizes.append(("class_prior", 1, n_out))
    return sizes


class DGCSPN(tf.Module):
    """A Deep Generalized Convolutional Sum-Product Network.

    Parameters
    ----------
    spatial_shape : tuple of int
        ``(H, W)``; 1-D data is ``(1, n)``.
    leaf : Leaf
        Leaf layer with ``n_components`` channels per cell.
    products : list of ProductSpec
        The product layers (see ``scopes.plan_products``); validated here.
    sum_channels : list of int
        Output channels of the spatial sum after each product but the last
        (``len(products) - 1`` entries).
    n_classes : int, optional
        ``None``: one root sum, ``log S(x)``. An int: ``n_classes`` class sums and a
        class prior, giving ``log p(x, y=k)``.
    shared_sums : bool
        Share spatial-sum weights across cells.
    log_space : bool
        Log-space accumulators (gradient learning) or counts (EM).
    seed : int
        Seeds the initial weights and one-hot channel subsets.

    Attributes
    ----------
    fuse_products : bool
        Run each large product (``products.XLA_MIN_PIXELS``) and the sum after it as one
        compiled op (``product_sum``; same results, faster). Default True; False runs
        them apart. Small layers always run apart: on 8 x 8 images the fused op's extra
        tracing and compilation cost more than it saves.
    """

    fuse_products = True

    def __init__(self, spatial_shape, leaf: Leaf, products: list[ProductSpec],
                 sum_channels: list[int], n_classes=None, shared_sums=False,
                 log_space=True, seed=0, name="dgcspn"):
        super().__init__(name=name)
        self.spatial_shape = tuple(int(n) for n in spatial_shape)
        if len(self.spatial_shape) != 2:
            raise ValueError(f"spatial_shape must be (H, W), got {spatial_shape}")
        if any(isinstance(c, (bool, np.bool_)) or int(c) != c for c in sum_channels):
            raise ValueError(f"sum_channels must hold whole numbers, got {list(sum_channels)}")
        sum_channels = [int(c) for c in sum_channels]
        if len(sum_channels) != max(len(products) - 1, 0):
            raise ValueError(f"{len(products)} product layers need {max(len(products) - 1, 0)} "
                             f"sum layers between them, got sum_channels={sum_channels}")
        if any(c < 1 for c in sum_channels):
            raise ValueError(f"sum_channels must be positive, got {sum_channels}")
        if n_classes is not None and (isinstance(n_classes, (bool, np.bool_))
                                      or int(n_classes) != n_classes or n_classes < 1):
            raise ValueError(f"n_classes must be None or a positive integer, got {n_classes!r}")
        if tuple(leaf.spatial_shape) != self.spatial_shape:
            raise ValueError(f"the leaf's parameters cover {tuple(leaf.spatial_shape)} cells, "
                             f"the network's image {self.spatial_shape}")
        self.report = resolve(self.spatial_shape, products)
        self.leaf = leaf
        self.n_colors = leaf.n_colors
        self.n_classes = n_classes
        rng = np.random.default_rng(seed)
        channels = leaf.n_components
        self.products, self.sums = [], []
        for i, rp in enumerate(self.report.products):
            product = Product(rp, channels, rng=rng, name=f"product_{i}",
                              n_pixels=int(np.prod(self.spatial_shape)))
            self.products.append(product)
            channels = product.out_channels
            if i < len(products) - 1:
                n_cells = int(np.prod(rp.out_shape))
                s = SpatialSum(n_cells, channels, sum_channels[i], shared=shared_sums,
                               log_space=log_space, rng=rng, name=f"sum_{i}")
                self.sums.append(s)
                channels = sum_channels[i]
        self.top_channels = channels
        self.n_top_inputs = self.report.n_top_cells * channels
        self.top = SpatialSum(1, self.n_top_inputs, n_classes or 1, log_space=log_space,
                              rng=rng, name="class_sums" if n_classes else "root")
        self.class_prior = None
        if n_classes:
            self.class_prior = SpatialSum(1, n_classes, 1, log_space=log_space,
                                          init=np.zeros((1, n_classes, 1)), name="class_prior")
        self._leaf_log_prob_fn = tf.function(self._leaf_log_prob, jit_compile=True,
                                             autograph=False)  # traced per ``hidden``

    # ------------------------------------------------------------------ structure
    @property
    def weight_layers(self):
        """All sum layers in forward order (spatial sums, top sums, class prior)."""
        layers = list(self.sums) + [self.top]
        if self.class_prior is not None:
            layers.append(self.class_prior)
        return layers

    def log_weights(self):
        return [layer.log_weights() for layer in self.weight_layers]

    def normalised_weights(self):
        """The current ``NormalisedWeights``, for the queries' ``weights`` argument."""
        log_w, w, log_min = zip(*[layer.normalised() for layer in self.weight_layers])
        return NormalisedWeights(list(log_w), list(w), list(log_min))

    def weight_specs(self):
        """``tf.TensorSpec``s of ``normalised_weights()`` (a compiled query's signature)."""
        specs = [tf.TensorSpec(layer.accumulator.shape, tf.float32)
                 for layer in self.weight_layers]
        mins = [tf.TensorSpec([shape[0], shape[2]], tf.float32)
                for shape in (spec.shape for spec in specs)]
        return NormalisedWeights(specs, list(specs), mins)

    def describe(self):
        """Human-readable layer table: name, kernel, dilation, output cells, channels."""
        rows = [f"leaf: {self.spatial_shape} x {self.leaf.n_components} components"]
        for i, p in enumerate(self.products):
            rows.append(
                f"{p.name}: kernel {p.resolved.spec.kernel} strides "
                f"{tuple(op.stride for op in p.axes)} dilations "
                f"{tuple(op.dilation for op in p.axes)} -> {p.out_shape} x {p.out_channels} "
                f"({p.mode})")
            if i < len(self.sums):
                rows.append(f"{self.sums[i].name}: -> {self.sums[i].out_channels} channels")
        rows.append(f"top: {self.report.top_shape} full-scope cells x {self.top_channels} "
                    f"channels -> {self.n_classes or 1} sum(s)")
        return "\n".join(rows)

    # ------------------------------------------------------------------ forward
    def leaf_log_prob(self, x, hidden="marginal"):
        """``x`` ``[B, H, W, n_colors]`` (NaN = missing) -> leaf log-probs ``[H, W, B, K]``;
        missing entries marginalised, or maximised with ``hidden='max'`` (``Leaf.log_prob``)."""
        # The transpose, the missing-value masks and the Normal density are a chain of
        # elementwise passes over [H, W, B, K], which XLA fuses into one: 29 -> 7 ms on the
        # MNIST classifier's 32 components at batch 128. Small images (XLA_MIN_PIXELS, as
        # for the products) do not repay a compilation per input shape.
        # Checked on the static shape (free in a traced function): a wrong colour count
        # broadcast against the leaves silently.
        shape, expected = tf.TensorShape(x.shape), self.spatial_shape + (self.n_colors,)
        if shape.rank is not None and (shape.rank != 4 or any(
                n is not None and n != e for n, e in zip(shape[1:], expected))):
            raise ValueError(f"x must have shape [B, H, W, n_colors] = [B, "
                             f"{', '.join(map(str, expected))}], got {shape}")
        if self._compiles_own_passes():
            return self._leaf_log_prob_fn(x, hidden)
        return self._leaf_log_prob(x, hidden)

    def _compiles_own_passes(self):
        """Whether the network's own elementwise passes (leaves, the top sum's routing) run
        as small XLA-compiled functions: on images of at least ``XLA_MIN_PIXELS`` pixels, as
        the products' layers, unless a step compiled as a whole is being traced."""
        return int(np.prod(self.spatial_shape)) >= XLA_MIN_PIXELS and not tracing_for_xla()

    def _leaf_log_prob(self, x, hidden="marginal"):
        return self.leaf.log_prob(tf.transpose(x, [1, 2, 0, 3]), hidden)

    def forward_from_leaves(self, leaf_lp, log_weights=None, routing="gradient", seed=None,
                            product_dropout=0.0, input_dropout=0.0, sample_index=None,
                            keep_masks=None, given_weights=None, forward_only=False):
        """Run the stack from leaf log-probs ``[H, W, B, K]``.

        Random draws (dropout masks, tie-breaking, sampling) are keyed by ``seed`` and
        ``sample_index`` ``[B]``, each sample's index in the global batch (default
        ``0..B-1``), so a batch split across replicas draws what it would on one device.
        ``keep_masks``: the dropout masks made beforehand by ``dropout_masks`` (the same
        masks as made here; see there why). ``given_weights``: ``NormalisedWeights``
        to use instead of ``log_weights``; with neither, the weights are normalised from
        the accumulators (``normalised_weights``), differentiably. Under routings that
        read no log-weights (``sums.READS_LOG_WEIGHTS``) the log entries only carry the
        gradients (the counts), so any tensors of their shapes will do (``em_counts``
        passes the linear weights). ``forward_only``: the values only, without a backward
        pass (queries; see ``product_sum``).

        Returns
        -------
        top : Tensor ``[B, n_classes or 1]``
            Root log-value, or the class sums ``log S_k(x)`` (without the prior).
        root : Tensor ``[B]``
            ``log p(x)``: the root, or the prior-weighted mixture of the class sums.
        """
        if given_weights is None and log_weights is None:
            # normalised here, each layer with a single exponential (SpatialSum.normalised)
            given_weights = self.normalised_weights()
        if given_weights is not None:
            log_weights, linear_weights, log_min = given_weights
        else:  # each layer takes exp(log_w) and its minimum itself
            linear_weights = log_min = [None] * len(log_weights)
        if seed is None:
            seed = tf.constant([0, 0], tf.int64)
        if sample_index is None:
            sample_index = tf.range(tf.shape(leaf_lp)[2])

        # Every random stream (a layer's tie-breaks, a dropout mask) is folded out of one
        # set of per-sample keys; the leaf draws of ``complete`` use the salt _LEAF_STREAM,
        # which no layer uses.
        sample_keys = keyed_random.sample_keys(seed, sample_index)

        def layer_keys(i):
            return keyed_random.fold_in(sample_keys, i)

        if keep_masks is not None:  # made beforehand, in the order of dropout_plan
            given = {stream: mask for (stream, _, _), mask in
                     zip(self.dropout_plan(product_dropout, input_dropout), keep_masks)}

        def keep_mask(stream, rate, like=None, product=None):
            """The keep mask of ``stream``: given, or made for ``like`` ``[H, W, B, ...]``
            (samples on axis 2), or for ``product``'s outputs by their shape (a fused
            layer never writes them)."""
            if keep_masks is not None:
                return given[stream]
            if like is None:
                return _sized_keep_mask(product, layer_keys(stream), rate)
            return _keep_mask(like, layer_keys(stream), rate)

        x = leaf_lp
        if input_dropout > 0.0:  # marginalise whole pixels: log 1
            keep = keep_mask(1000, input_dropout, like=x[..., 0])
            x = tf.where(keep[..., None], x, tf.zeros_like(x))
        # Product dropout is part of the fused op under the soft routings (the gradient
        # steps that drop, soft EM); the others drop between separate layers.
        fuses_dropout = product_dropout == 0.0 or routing in SOFT_ROUTINGS
        for i, product in enumerate(self.products):
            if (self.fuse_products and product.scalable and product.compile_large
                    and i < len(self.sums) and fuses_dropout):
                keep = (keep_mask(2000 + i, product_dropout, product=product)
                        if product_dropout > 0.0 else None)
                x = product_sum(product, self.sums[i], x, log_weights[i], routing,
                                layer_keys(i), linear_weights[i], log_min[i], keep,
                                forward_only)
                continue
            x = product_of(product, x)
            if product_dropout > 0.0:  # drop product nodes: log 0
                keep = keep_mask(2000 + i, product_dropout, like=x)
                x = tf.where(keep, x, tf.fill(tf.shape(x), LOG_ZERO))
            if i < len(self.sums):
                # Unweighted choices child by child where the fused op makes them (large
                # layers): the same draws either way. Small layers keep one argmax over the
                # combinations, which took less time there (a digits imputer's fit: 2.7
                # against 3.4 s). Dropped products are no combinations of their children.
                combinations = (product.combinations() if product.compile_large
                                and product_dropout == 0.0 else None)
                x = self.sums[i](x, log_weights[i], routing, layer_keys(i),
                                 linear_weights[i], combinations)
        (h0, nh), (w0, nw) = self.report.top_index
        x = to_log_values(x)[h0:h0 + nh, w0:w0 + nw]  # full-scope cells only (completeness)
        batch = tf.shape(x)[2]
        x = tf.reshape(tf.transpose(x, [2, 0, 1, 3]), [1, batch, self.n_top_inputs])
        n = len(self.sums)
        # The top sum is over every full-scope cell's channels (16384 on the MNIST
        # inpainting net): its hard routing runs compiled on large images (routed_sum).
        top = routed_sum(x, log_weights[n], routing, layer_keys(500), linear_weights[n],
                         compiled=self._compiles_own_passes())
        if self.class_prior is None:
            return top[0], top[0, :, 0]
        root = routed_sum(top, log_weights[n + 1], routing, layer_keys(501),
                          linear_weights[n + 1])
        return top[0], root[0, :, 0]

    def dropout_plan(self, product_dropout, input_dropout):
        """``(stream, mask shape, rate)`` of each dropout mask the forward pass draws:
        input dropout, then each product layer; ``None`` is the batch axis."""
        h, w = self.spatial_shape
        plan = [(1000, (h, w, None), input_dropout)] + [
            (2000 + i, tuple(p.out_shape) + (None, p.out_channels), product_dropout)
            for i, p in enumerate(self.products)]
        return [entry for entry in plan if entry[2] > 0.0]

    def dropout_masks(self, seed, sample_index, product_dropout, input_dropout):
        """The keep masks of ``forward_from_leaves``'s dropout, made on their own (a list
        in the order of ``dropout_plan``).

        Inside one XLA-compiled training step, XLA fuses the mask's hash rounds into every
        consumer of the mask, so the hash is computed several times over (the classifier's
        Adam step at batch 128: 826 ms with dropout against 177 ms without). Made by a
        separate compiled function and passed in as ``keep_masks``, the masks are computed
        once (200 ms). Same keys, same masks as made inside the forward pass.
        """
        keys = keyed_random.sample_keys(seed, sample_index)
        batch = tf.shape(sample_index)[0]
        return [_keep_mask_of_shape(tf.stack([batch if n is None else n for n in shape]),
                                    keyed_random.fold_in(keys, stream), rate)
                for stream, shape, rate in self.dropout_plan(product_dropout, input_dropout)]

    def forward(self, x, routing="gradient", seed=None, product_dropout=0.0, input_dropout=0.0,
                sample_index=None, keep_masks=None, weights=None, forward_only=False):
        return self.forward_from_leaves(self.leaf_log_prob(x), None, routing, seed,
                                        product_dropout, input_dropout, sample_index,
                                        keep_masks, weights, forward_only)

    # ------------------------------------------------------------------ queries
    # ``weights``: the ``NormalisedWeights`` to use (default: formed from the accumulators).
    def log_likelihood(self, x, weights=None, forward_only=False):
        """``log p(x)`` ``[B]``, missing (NaN) values marginalised. ``forward_only``: a
        value that will not be differentiated (a query; see ``product_sum``)."""
        return self.forward(x, weights=weights, forward_only=forward_only)[1]

    def joint_log_likelihood(self, x, weights=None, forward_only=False):
        """``log p(x, y=k)`` ``[B, n_classes]`` (classifier networks); ``forward_only`` as
        ``log_likelihood``."""
        top, _ = self.forward(x, weights=weights, forward_only=forward_only)
        return self.joint_from_top(top, weights)

    def joint_from_top(self, top, weights=None):
        """``log p(x, y=k)`` from the class sums' ``log p(x | y=k)`` ``top`` ``[B, n_classes]``
        (``forward``'s first output): adds the log class prior."""
        log_prior = self.class_prior.log_weights() if weights is None else weights.log[-1]
        return top + log_prior[0, :, 0]

    def leaf_signal(self, x, routing, seed=None, sample_index=None, weights=None):
        """Backward signal at the leaves ``[H, W, B, K]`` and ``log p(x)`` ``[B]``.

        ``soft``: the posterior of every component given the evidence. ``max``: the MPE
        selection, with ``log p(x)`` the max-product value (missing entries maximised, not
        summed out: the MPE is the best joint assignment of the latent choices and the
        missing entries). ``sample``: a sampled selection (conditional on the evidence).
        """
        leaf_lp = self.leaf_log_prob(x, "max" if routing == "max" else "marginal")
        with tf.GradientTape() as tape:
            tape.watch(leaf_lp)
            _, root = self.forward_from_leaves(leaf_lp, None, routing, seed,
                                               sample_index=sample_index,
                                               given_weights=weights)
            total = tf.reduce_sum(root)
        return tape.gradient(total, leaf_lp), root

    def complete(self, x, method="marginal", seed=None, sample_index=None, weights=None):
        """Fill the NaN entries of ``x`` ``[B, H, W, n_colors]``; observed values are kept.

        ``method``: ``'marginal'`` (the paper's inpainting: the mean of each entry's
        posterior marginal, for discrete leaves its most probable value), ``'mpe'``
        (max-product completion) or ``'sample'``. ``sample_index`` ``[B]`` (default
        ``0..B-1``) keys the random draws per sample: give a large input's batches their
        global row numbers and the result does not depend on the batching.
        """
        routings = {"marginal": "soft", "mpe": "max", "sample": "sample"}
        if method not in routings:
            raise ValueError(f"method must be one of {sorted(routings)}, got {method!r}")
        routing = routings[method]
        if seed is None:
            seed = tf.constant([0, 0], tf.int64)
        if sample_index is None:
            sample_index = tf.range(tf.shape(x)[0])
        signal, _ = self.leaf_signal(x, routing, seed, sample_index, weights)
        if method == "marginal":
            values = self.leaf.marginal_completion(signal)
        elif method == "mpe":
            values = self.leaf.mode(signal)
        else:
            keys = keyed_random.sample_keys(seed, sample_index)
            values = self.leaf.sample(signal, keyed_random.fold_in(keys, _LEAF_STREAM))
        values = tf.transpose(values, [2, 0, 1, 3])
        return tf.where(tf.math.is_nan(x), values, x)

    def predictive(self, x, weights=None):
        """Discrete leaves: each entry's posterior marginal given the observed entries of
        ``x`` ``[B, H, W, n_colors]``, ``[B, H, W, n_colors, n_values]`` (what the
        ``'marginal'`` completion takes the most probable value of)."""
        signal, _ = self.leaf_signal(x, "soft", weights=weights)
        return tf.transpose(self.leaf.predictive(signal), [2, 0, 1, 3, 4])

    def em_counts(self, x, routing, seed=None, weight=None, sample_index=None, weights=None):
        """Counts per sum layer for a batch and the batch's ``log p(x)``.

        The counts are the gradient of ``sum_b log S(x_b)`` with respect to each layer's
        normalised log-weights under the chosen routing: hard win counts (``hard``,
        ``hard_unweighted``) or expected counts (``soft``). ``weight`` ``[B]`` scales each
        sample's signal (0 for padding rows); ``sample_index`` keys the random tie-breaks
        (see ``forward_from_leaves``); ``weights``: the ``NormalisedWeights`` to count
        with (default: formed from the accumulators).
        """
        leaf_lp = self.leaf_log_prob(x)
        with tf.GradientTape() as tape:
            if weights is None:  # normalised once, each layer then takes them as given
                weights = self.normalised_weights()
            # The counts are what the layers' routings return as the gradients of the
            # tensors given as log-weights. Routings that read no log-weight values take
            # the linear weights in their place, so that the step forms no log of every
            # weight (normalised() makes it, unused it is dropped from the compiled
            # step): the online USI step (A/B in alternating processes), MNIST inpainting
            # net batch 64 54.5-58.5 -> 50.1-55.2 ms, batch 128 99.8-101.5 -> 93.5-98.0,
            # Olivetti batch 64 304-314 -> 278-289 (benchmarks/README.md).
            handles = weights.log if routing in READS_LOG_WEIGHTS else weights.linear
            tape.watch(handles)
            _, root = self.forward_from_leaves(leaf_lp, handles, routing, seed,
                                               sample_index=sample_index,
                                               given_weights=weights._replace(log=handles))
            total = tf.reduce_sum(root if weight is None else weight * root)
        return tape.gradient(total, handles), root

    # ------------------------------------------------------------------ state
    def get_weights(self):
        """All variables as numpy arrays, in a fixed order (for pickling)."""
        return [v.numpy() for v in self._ordered_variables()]

    def set_weights(self, arrays):
        variables = self._ordered_variables()
        if len(arrays) != len(variables):
            raise ValueError(f"expected {len(variables)} arrays, got {len(arrays)}")
        for v, a in zip(variables, arrays):
            if tuple(v.shape) != tuple(np.shape(a)):
                raise ValueError(f"variable {v.name}: shape {tuple(v.shape)} != {np.shape(a)}")
            v.assign(a)

    def _ordered_variables(self):
        leaf_vars = sorted(self.leaf.variables, key=lambda v: v.name)
        return leaf_vars + [layer.accumulator for layer in self.weight_layers]
