"""Generalised convolutional log-product (GCLP) layers.

A product's kernel is one-hot, so in log space a GCLP is a sum of ``prod(kernel)``
shifted (strided, dilated) slices of the padded input, one per kernel offset. No
convolution is needed: dilated ``tf.nn.conv2d`` has no CPU gradient, and slices are both
differentiable and fast. Padding cells hold log-prob 0 (probability 1, empty scope).

Layout is cells-major ``[H, W, B, C]``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading

import numpy as np
import tensorflow as tf

from .scopes import ResolvedProduct
from .sums import _stable_max


#: ``Product.scaled`` and ``Product.backward`` (and the hard routing after them,
#: ``product_sum``) run compiled by XLA in networks over images of at least
#: ``XLA_MIN_PIXELS`` pixels, for products with at least ``XLA_MIN_CELLS`` output cells.
#: XLA fuses their slices, products, maxima, exponentials and argmaxes into few passes: on
#: the MNIST inpainting net (841 to 3481 cells per layer, batch 64 / 128, CPU,
#: benchmarks/throughput.py) forward 362 / 476 -> 501 / 631 images/s, hard-EM step
#: 179 / 160 -> 277 / 255, imputation 216 / 242 -> 297 / 385; on the MNIST classifier's
#: smaller layers (49 to 196 cells after two stride-2 products) compiling them from 48
#: cells up instead of 256 gave imputation 1825-1974 -> 2227-2267 images/s at batch 64
#: and 2162-2297 -> 2799-2874 at 128 (EPYC, A/B pairs in alternating processes), hard EM
#: faster in most pairs, the forward pass within the noise (2269-3038 against 2349-3508
#: at batch 64). Each new input shape costs a
#: compilation, which networks over small images (8 x 8 digits: fits of a few seconds,
#: most of the test suite) do not repay; they also run the product and sum apart
#: (``DGCSPN.fuse_products``).
XLA_MIN_PIXELS = 256
XLA_MIN_CELLS = 48


def compiles_layer(n_cells, n_pixels):
    """Whether a layer of ``n_cells`` cells in a network over ``n_pixels`` pixels runs its
    fused passes compiled by XLA (see ``XLA_MIN_PIXELS``)."""
    return n_pixels >= XLA_MIN_PIXELS and n_cells >= XLA_MIN_CELLS


# Set while a function that XLA compiles as a whole is traced (``traced_for_xla``). The
# layers then leave their parts to that compilation: a compiled leaf function nested in an
# XLA-compiled gradient step made the MNIST classifier's Adam step 30x slower (16 against
# 600 images/s at batch 128), and ``Product.scaled_from``'s choice between two compiled
# functions (an XLA conditional there) made the whole-step-compiled forward pass of the
# MNIST inpainting net slower (465 against 611 images/s at batch 128).
_WHOLE_XLA = threading.local()


@contextlib.contextmanager
def traced_for_xla():
    """Context for tracing a function compiled by XLA as a whole (``jit_compile=True``)."""
    previous = tracing_for_xla()
    _WHOLE_XLA.tracing = True
    try:
        yield
    finally:
        _WHOLE_XLA.tracing = previous


def tracing_for_xla():
    """Whether a function compiled by XLA as a whole is being traced."""
    return getattr(_WHOLE_XLA, "tracing", False)


# Set while one of a layer's own XLA-compiled functions is traced (``_xla_function``).
_LAYER_XLA = threading.local()


def _traced_in_layer_xla(fn, *args):
    previous = getattr(_LAYER_XLA, "tracing", False)
    _LAYER_XLA.tracing = True
    try:
        return fn(*args)
    finally:
        _LAYER_XLA.tracing = previous


def _xla_function(fn):
    """``fn`` compiled by XLA, traced with ``compiled_by_xla()`` set. A partial, not a
    closure: TensorFlow's retracing warning counts traces per code object, which a closure
    would share across every layer's functions."""
    return tf.function(functools.partial(_traced_in_layer_xla, fn), jit_compile=True,
                       autograph=False)


def compiled_by_xla():
    """Whether the code being traced will run compiled by XLA (a layer's own compiled
    function, or a step compiled as a whole): where formulations are chosen for XLA's
    fusion rather than for TensorFlow's kernels (``Product._windowed``)."""
    return getattr(_LAYER_XLA, "tracing", False) or tracing_for_xla()


#: ``Product.scaled_from`` multiplies the children's values directly when their product
#: is provably at least ``exp(LINEAR_MIN_LOG)`` (float32's smallest normal number is
#: about 1.2e-38), and goes through log-values otherwise.
LINEAR_MIN_LOG = float(np.log(1e-30))


def product_channels(resolved, in_channels):
    """Output channels of the product ``resolved`` over ``in_channels`` channels: the
    same for a depthwise product; all combinations, or the subset's size, for a one-hot
    product (a one-cell kernel is depthwise)."""
    n_children = int(np.prod([op.kernel for op in resolved.axes]))
    if n_children == 1 or resolved.spec.mode == "depthwise":
        return int(in_channels)
    n_all = int(in_channels) ** n_children
    cap = resolved.spec.n_channels
    return n_all if cap is None or n_all <= cap else int(cap)


def _runs(bases, n_in, n_out):
    """Split the outputs ``[0, n_out)`` of a unit-stride axis, where output ``i`` combines
    the inputs ``i + b`` for ``b`` in ``bases`` that lie in ``[0, n_in)``, into runs over
    which the same offsets are inside: ``[(lo, hi, [start of each inside offset])]``."""
    cuts = {0, n_out}
    for b in bases:
        cuts.update(edge for edge in (-b, n_in - b) if 0 < edge < n_out)
    cuts = sorted(cuts)
    return [(lo, hi, [b + lo for b in bases if b + lo >= 0 and b + hi <= n_in])
            for lo, hi in zip(cuts, cuts[1:])]


def _combine_along(x, axis, bases, n_out, combine, fill):
    """Output ``i`` along ``axis`` (0 or 1 of ``[H, W, B, C]``) is ``combine`` of the
    inputs ``x[i + b]`` for ``b`` in ``bases``; offsets outside ``x`` are padding, the
    identity of ``combine``, so a run where none is inside is ``fill``.

    Run by run, so no padded copy of ``x`` is written: the MNIST inpainting net's d=16
    layer (``[43, 43, 128, 16]`` -> ``[59, 59, 128, 16]``, XLA), its product with the
    maximum and division of ``Product.scaled_from``: 13.4-17.8 ms from slices of the
    padded input, 11.6-13.1 ms this way. Padding one axis at a time (then slices along
    it) was slower than runs: 11.2-12.5 against 8.9-9.8 ms, both with a reciprocal in
    place of the division (one-off timings; benchmarks/README.md).
    """
    # the other axis as a single run of one offset, 0: each part spans it whole
    if axis == 0:
        return _combine_window(x, [bases, [0]], [n_out, x.shape[1]], combine, fill)
    return _combine_window(x, [[0], bases], [x.shape[0], n_out], combine, fill)


def _combine_window(x, bases, out_shape, combine, fill, scale=None):
    """Output ``(i, j)`` of ``[H_out, W_out, ...]`` is ``combine`` of the inputs
    ``x[i + a, j + b]`` for ``a`` in ``bases[0]``, ``b`` in ``bases[1]`` (``[H_in, W_in,
    ...]``); offsets outside ``x`` are padding, the identity of ``combine``, so a block
    where none is inside is ``fill``. With ``scale`` (shaped as ``x`` or broadcasting to
    it), each term is ``x * scale`` at its own cell.

    Block by block over both axes' runs (``_runs``), so XLA writes the output in one pass
    from ``x``, with no padded copy and no intermediate: ``x * scale`` is formed inside
    every term rather than once beforehand, which XLA would write as a tensor of its own
    (it is read by up to ``len(bases[0]) * len(bases[1])`` terms). The Olivetti net's d=32
    layer, ``Product.scaled_from`` of ``[95, 95, 64, 16]`` (XLA, CPU): 16.3-18.1 ms one
    axis after the other, 12.9-13.8 ms this way (benchmarks/README.md).
    """
    row_runs = _runs(bases[0], x.shape[0], out_shape[0])
    col_runs = _runs(bases[1], x.shape[1], out_shape[1])

    def term(a, b, rows, cols):
        t = x[a:a + rows, b:b + cols]
        return t if scale is None else t * scale[a:a + rows, b:b + cols]

    blocks = []
    for lo0, hi0, starts0 in row_runs:
        row = []
        for lo1, hi1, starts1 in col_runs:
            terms = [term(a, b, hi0 - lo0, hi1 - lo1) for a in starts0 for b in starts1]
            if terms:
                part = terms[0]
                for t in terms[1:]:
                    part = combine(part, t)
            else:
                shape = tf.concat([[hi0 - lo0, hi1 - lo1], tf.shape(x)[2:]], 0)
                part = tf.fill(shape, tf.constant(fill, x.dtype))
            row.append(part)
        blocks.append(row[0] if len(row) == 1 else tf.concat(row, 1))
    return blocks[0] if len(blocks) == 1 else tf.concat(blocks, 0)


def _contracted(p, w):
    """``p @ w`` per cell as a reduction (``p`` ``[H, W, B, C_in]``, ``w`` ``[N | 1, C_in,
    C_out]``, ``N = H * W``), which XLA fuses with the pass that forms ``p``
    (``Product.summed_from``). Returns ``[N, B, C_out]``."""
    h, w_cells, c_in = p.shape[0], p.shape[1], p.shape[3]
    p = tf.reshape(p, tf.concat([[h * w_cells], tf.shape(p)[2:3], [c_in, 1]], 0))
    return tf.reduce_sum(p * w[:, None], axis=2)


def _normalised(s, m):
    """``log(s) + m`` as ``(s / max(s), m + log(max(s)))``, the maximum over the channels
    of each cell and sample. One reciprocal per (cell, sample) and a multiply per value: a
    division per value took 1.5 of 11.5 ms on the d=16 layer of ``Product.scaled_from``
    (XLA, batch 128)."""
    top = tf.reduce_max(s, axis=-1, keepdims=True)
    return s * tf.math.reciprocal(top), m + tf.math.log(top)


class Product(tf.Module):
    """One GCLP layer built from a resolved (validated) ``ProductSpec``.

    Parameters
    ----------
    resolved : ResolvedProduct
        Geometry from ``scopes.resolve``.
    in_channels : int
    rng : numpy Generator
        Draws the random subset of channel combinations in one-hot mode.
    """

    def __init__(self, resolved: ResolvedProduct, in_channels: int, rng=None, name=None,
                 n_pixels=None):
        super().__init__(name=name or resolved.spec.name)
        self.resolved = resolved
        # Pixels of the network's image (the compilation rule, ``XLA_MIN_PIXELS``);
        # default: this layer's input cells, as for a first layer.
        self.n_pixels = int(np.prod(resolved.in_shape)) if n_pixels is None else n_pixels
        self.axes = resolved.axes
        self.out_shape = resolved.out_shape
        self.in_channels = int(in_channels)
        self.offsets = list(itertools.product(*[range(op.kernel) for op in self.axes]))
        n_children = len(self.offsets)
        self.mode = resolved.spec.mode if n_children > 1 else "depthwise"
        self.channel_index = None  # [n_children, C_out] for a one-hot subset
        if self.mode not in ("depthwise", "one_hot"):
            raise ValueError(f"unknown product mode {self.mode!r}")
        self.out_channels = product_channels(resolved, self.in_channels)
        if self.mode == "one_hot":
            n_all = self.in_channels ** n_children
            if self.out_channels < n_all:  # a random subset of the combinations
                cap = self.out_channels
                rng = np.random.default_rng(0) if rng is None else rng
                if n_all < 2**62:
                    codes = rng.choice(n_all, size=cap, replace=False)
                    digits = np.stack(self.combination_digits(np.sort(codes)))
                else:
                    digits = self._distinct_digit_rows(rng, n_children, cap).T
                self._subset_digits = digits.astype(np.int32)
                self.channel_index = tf.constant(self._subset_digits)
        # Compiled variants for large layers (compiles_layer).
        self._scaled_fn = _xla_function(self._scaled_impl)
        self._factored_fn = _xla_function(self._factored_impl)
        self._scaled_linear_fn = _xla_function(self._scaled_linear_impl)
        self._scaled_log_fn = _xla_function(self._scaled_log_impl)
        self._forward_from_logs_fn = _xla_function(self._forward_from_logs)
        self._forward_multiplied_fn = _xla_function(self._forward_multiplied)
        self._summed_linear_fn = _xla_function(self._summed_linear)
        self._summed_log_fn = _xla_function(self._summed_log)
        self._backward_fn = _xla_function(self._backward)
        self._value_floor_fn = _xla_function(self._value_floor)
        self._factored_backward_fn = _xla_function(self._factored_backward)

    def _distinct_digit_rows(self, rng, n_children, count):
        """``count`` distinct combinations ``[count, n_children]``, drawn digit by digit
        (their codes, ``in_channels ** n_children``, overflow int64 for large kernels), in
        the order of their codes."""
        rows = np.empty((0, n_children), np.int64)
        while len(rows) < count:
            draws = rng.integers(0, self.in_channels, size=(count - len(rows), n_children))
            rows = np.unique(np.concatenate([rows, draws]), axis=0)
        return rows[np.sort(rng.choice(len(rows), size=count, replace=False))]

    def combinations(self):
        """``(C_in, n_children)`` when the output channels are all combinations of one
        channel per child (``combination_digits``), else None."""
        if self.mode == "one_hot" and self.channel_index is None:
            return self.in_channels, len(self.offsets)
        return None

    def combination_digits(self, codes, n_children=None):
        """Each child's channel in the combinations ``codes`` (numpy or TensorFlow integers):
        their mixed-radix digits in base ``in_channels``, first child most significant, one
        array per child (the order of ``offsets``; of the first ``n_children`` children,
        for combinations of those only)."""
        n, radix = n_children or len(self.offsets), self.in_channels
        return [(codes // radix ** (n - 1 - i)) % radix for i in range(n)]

    def _children(self, x, pad_value=0.0):
        paddings = [[op.pad_before, op.pad_after] for op in self.axes] + [[0, 0], [0, 0]]
        if any(p != [0, 0] for p in paddings):
            # 0 = log 1 (log space) or 1 (probability space): padding cells are constant 1
            x = tf.pad(x, paddings, constant_values=pad_value)
        if self._blocked():
            return self._block_children(x, pad_value)
        children = []
        for offset in self.offsets:
            begin = [op.out_start * op.stride + a * op.dilation
                     for op, a in zip(self.axes, offset)]
            end = [b + (n - 1) * op.stride + 1
                   for b, n, op in zip(begin, self.out_shape, self.axes)]
            strides = [op.stride for op in self.axes]
            children.append(tf.strided_slice(x, begin + [0, 0], end + [0, 0],
                                             strides + [1, 1], end_mask=0b1100))
        return children

    # Slices with a stride > 1 run a slow generic kernel in TensorFlow on CPU: the forward
    # pass of the classifier's first 2x2 stride-2 product ([28, 28, 128, 32] input) took
    # 35 ms as strided slices and 4.3 ms as unit-stride slices of the input viewed as
    # blocks (benchmarks/formulations.py --products). XLA compiles both alike (2.4-2.8 ms).
    def _blocked(self):
        """Whether the product is strided and every kernel offset lies inside one stride, so
        the children are the cells of non-overlapping blocks."""
        return (any(op.stride > 1 for op in self.axes)
                and all((op.kernel - 1) * op.dilation < op.stride for op in self.axes))

    def _block_children(self, x, pad_value):
        """``_children`` of a ``_blocked`` product from the padded input ``x``: crop the
        output's blocks, view each axis as ``[n_out, stride]``, take offset ``a * dilation``
        of every block."""
        (h_out, w_out), (op_h, op_w) = self.out_shape, self.axes
        starts = [op.out_start * op.stride for op in self.axes]
        spans = [n * op.stride for n, op in zip(self.out_shape, self.axes)]
        # The last block may reach past the padded input by up to stride - 1 cells that no
        # child uses; pad them so the crop is whole blocks.
        extra = [max(0, s + n - x.shape[i]) for i, (s, n) in enumerate(zip(starts, spans))]
        if any(extra):
            x = tf.pad(x, [[0, extra[0]], [0, extra[1]], [0, 0], [0, 0]],
                       constant_values=pad_value)
        x = x[starts[0]:starts[0] + spans[0], starts[1]:starts[1] + spans[1]]
        blocks = tf.reshape(x, tf.concat([[h_out, op_h.stride, w_out, op_w.stride],
                                          tf.shape(x)[2:]], 0))
        return [blocks[:, a * op_h.dilation, :, b * op_w.dilation] for a, b in self.offsets]

    def __call__(self, x):
        """``[H_in, W_in, B, C_in]`` -> ``[H_out, W_out, B, C_out]``."""
        if len(self.offsets) == 1 and self.mode == "depthwise" and not self._pads_or_crops():
            return x  # an identity layer (kernel 1 on every axis)
        if self._backward_kind() is None:
            return self._forward(x)

        @tf.custom_gradient
        def product(x):
            def grad(g):
                return self.backward(g)

            return self._forward(x), grad

        return product(x)

    # ------------------------------------------------------------------ scaled forward
    @property
    def scalable(self):
        """Whether ``scaled`` can form this product's output (with its own backward pass)."""
        return len(self.offsets) > 1 and self._backward_kind() is not None

    def scaled(self, x):
        """The output ``log p + m`` as ``(p [H_out, W_out, B, C_out], m [H_out, W_out, B, 1])``.

        ``m`` is the maximum over the channels of each cell and sample, so ``max(p) = 1``:
        what a following sum needs (``sums.log_matmul_exp``), computed in one compiled
        pass without writing the log-values. For a one-hot product of all
        channel combinations every output channel is a sum of one channel per child, so
        ``p`` is a product of the children's max-scaled exponentials and ``m`` the sum of
        their maxima: ``C_in`` exponentials per input cell instead of ``C_in ** n``.
        Only for ``scalable`` products; no gradient of its own (``product_sum`` routes
        the signal and calls ``transpose`` / ``backward``).
        """
        return self._scaled_fn(x) if self.compile_large else self._scaled_impl(x)

    @property
    def compile_large(self):
        """Whether this layer's fused passes are worth compiling by XLA (``XLA_MIN_PIXELS``)."""
        return compiles_layer(int(np.prod(self.out_shape)), self.n_pixels)

    def _scaled_impl(self, x):
        if self.mode == "depthwise" or self.channel_index is not None:
            out = self._forward(x)
            m = _stable_max(out, -1)
            return tf.exp(out - m), m
        children, m = self._scaled_children(x)
        return self._outer_product(children), m

    def factored_scaled(self, x):
        """``scaled`` of a one-hot product of all combinations in two factors, ``(q, e, m)``.

        ``p[..., r * C_in + a] = q[..., r] * e[..., a]``: ``q`` ``[H_out, W_out, B,
        C_in ** (n - 1)]`` is the product over all children but the last (their
        combinations, first child most significant), ``e`` ``[H_out, W_out, B, C_in]`` the
        last child's max-scaled exponentials. A sum after the product can contract ``q``
        with its weights first (``sums.factored_matmul``), so the ``C_in ** n`` channels
        of ``p`` are never written. Only when ``combinations()`` is not None.
        """
        return self._factored_fn(x) if self.compile_large else self._factored_impl(x)

    def _factored_impl(self, x):
        children, m = self._scaled_children(x)
        return self._outer_product(children[:-1]), children[-1], m

    def _scaled_children(self, x):
        """Each child's max-scaled exponentials (padding: 1) and the sum of their maxima."""
        m = _stable_max(x, -1)
        return self._children(tf.exp(x - m), pad_value=1.0), tf.add_n(self._children(m))

    def _outer_product(self, children):
        """All combinations of one channel per child, first child most significant."""
        n = len(children)
        p = None
        for i, c in enumerate(children):
            shape = [1] * n
            shape[i] = self.in_channels
            term = tf.reshape(c, tf.concat([tf.shape(c)[:3], shape], 0))
            p = term if p is None else p * term
        return tf.reshape(p, tf.concat([tf.shape(p)[:3], [self.in_channels ** n]], 0))

    def scaled_from(self, s, m, log_floor):
        """``scaled`` of the input given as ``log(s) + m`` (the output of a fused layer
        below, ``product_sum.ScaledValues``), without forming those log-values.

        A depthwise product of ``s`` is the product of the children's ``s`` (padding: 1)
        times ``exp`` of the sum of their ``m``: one multiply per child instead of a log
        per input and an exp per output. On the MNIST inpainting net's d=16 layer with its
        sum (``[43, 43, 128, 16]`` input, CPU): 43 ms from log-values, 27 ms this way.
        Each child is divided by its own maximum over the channels first, not the product
        by its maximum afterwards: a reduction over the input and a multiply inside the
        product's pass, instead of a reduction over the output and a pass that rescales
        it (whole forward pass, batch 128: MNIST inpainting net 1971-2213 -> 2228-2556
        images/s, Olivetti 391-416 -> 443-516; benchmarks/README.md). ``p`` then has
        maximum at most 1, not exactly 1.

        Exact as long as the product does not underflow: every normalised child is at
        least ``exp(log_floor)`` of its cell and channel (``ScaledValues``), so ``p`` is
        at least the product of those floors, the same product taken of ``log_floor`` (a
        batch of one); where that falls below ``LINEAR_MIN_LOG`` anywhere (fitted or
        extreme weights) the batch's own values decide (``multiplies_values``), and where
        they too could underflow the layer takes the log-values. The sum after the
        product, a convex combination of ``p`` per output, is at least the smallest entry
        of ``p``, so it does not underflow either. A bound of one number per layer, ``n``
        times the layer's smallest weight, sent the MNIST inpainting net's d = 2 layer
        through the log-values at initialisation (-73 against -63 per cell and channel;
        benchmarks/README.md).

        Parameters
        ----------
        s : Tensor ``[H_in, W_in, B, C_in]``, positive
        m : Tensor ``[H_in, W_in, B, 1]``
        log_floor : Tensor ``[H_in, W_in, 1, C_in]`` or ``[1, 1, 1, C_in]``
            A lower bound of ``log(s / max(s))`` (the maximum over the channels).
        """
        if self.compile_large:
            multiplied, from_logs = self._scaled_linear_fn, self._scaled_log_fn
        else:
            multiplied, from_logs = self._scaled_linear_impl, self._scaled_log_impl
        return self._multiplied_where_safe(self.mode == "depthwise", multiplied, from_logs,
                                           s, m, log_floor, self.compile_large)

    def summed_from(self, s, m, log_floor, w):
        """``scaled_from`` followed by the sum after the product, ``p @ w`` per cell, in one
        compiled pass that never writes ``p``: ``(s_out [H_out * W_out, B, C_out], m
        [H_out, W_out, B, 1])`` for weights ``w`` ``[N | 1, C_in, C_out]``. For a value
        without a backward pass (``product_sum``'s ``forward_only``): a backward pass
        needs ``p``.

        XLA takes the contraction as a reduction over the channels and fuses the product
        into it; the matmul (TensorFlow's batched GEMM) needs ``p`` written first. The
        Olivetti net's d=32 layer with its sum (``[95, 95, 64, 16]`` -> ``[127, 127, 64,
        16]``, CPU): 26-29 ms as the product's pass and a matmul, 15-17 ms this way; its
        d=2 layer 6-7 against 6 ms (one-off timings; benchmarks/README.md). Only for
        large layers (``compile_large``).
        """
        def multiplied(s, m):
            return self._summed_linear_fn(s, m, w)

        def from_logs(s, m):
            return self._summed_log_fn(s, m, w)

        return self._multiplied_where_safe(self.mode == "depthwise", multiplied, from_logs,
                                           s, m, log_floor, True)

    def _summed_linear(self, s, m, w):
        p, m = self._scaled_linear_impl(s, m)
        return _contracted(p, w), m

    def _summed_log(self, s, m, w):
        p, m = self._scaled_log_impl(s, m)
        return _contracted(p, w), m

    def _multiplied_where_safe(self, can_multiply, multiplied, from_logs, s, m, log_floor,
                               compiled):
        """``multiplied(s, m)`` where ``multiplies_scaled(log_floor)`` or, failing that,
        ``multiplies_values(s)``, else ``from_logs(s, m)``; always the latter when the
        product cannot multiply or a step compiled as a whole is traced (an XLA
        conditional there was slower).

        The weights' floors hold for every input but are loose for fitted networks: the
        smoothed counts of children a sum rarely chose are tiny (after one epoch of USI on
        30000 MNIST images the first depthwise layer's bound was -74, against the limit
        -69), while the values of a batch stay far from them. Where the floors refuse, the
        batch's own smallest and largest values decide (one more reduction over ``s``)."""
        if not can_multiply or tracing_for_xla():
            return from_logs(s, m)

        def by_values():
            return tf.cond(self.multiplies_values(s, compiled), lambda: multiplied(s, m),
                           lambda: from_logs(s, m))

        return tf.cond(self.multiplies_scaled(log_floor), lambda: multiplied(s, m), by_values)

    def multiplies_scaled(self, log_floor):
        """Whether ``scaled_from`` multiplies values whose normalised logs are at least
        ``log_floor`` (as there): the product of the floors, this product taken of them,
        stays above ``LINEAR_MIN_LOG`` everywhere. A scalar bool Tensor."""
        h_in, w_in = self.resolved.in_shape
        floor = tf.broadcast_to(log_floor, [h_in, w_in, 1, self.in_channels])
        return tf.reduce_min(self._forward(floor)) >= LINEAR_MIN_LOG

    def multiplies_values(self, s, compiled=False):
        """Whether the multiplied product of ``s`` ``[H_in, W_in, B, C_in]`` (each child
        divided by its maximum over the channels) stays above ``LINEAR_MIN_LOG``: its
        output is at least the product of the children's ratios of smallest to largest
        value, that product taken of them (one channel). A scalar bool Tensor."""
        floor = self._value_floor_fn(s) if compiled else self._value_floor(s)
        return tf.reduce_min(floor) >= LINEAR_MIN_LOG

    def _value_floor(self, s):
        ratio = tf.reduce_min(s, axis=-1, keepdims=True) / tf.reduce_max(s, axis=-1,
                                                                         keepdims=True)
        return self._forward(tf.math.log(ratio))

    def forward_from_scaled(self, s, m, log_floor):
        """The output log-values (``__call__``) from the input's ``log(s) + m``
        (``log_floor`` as in ``scaled_from``). A depthwise product multiplies the ``s``,
        each divided by its maximum over the channels, and takes the logs of its outputs
        where that cannot underflow (the rule of ``scaled_from``), else it adds the
        inputs' logs; the last product of the MNIST inpainting net, 59 x 59 input cells
        and 32 x 32 output cells, batch 128: 4.0-4.9 against 6.3-6.7 ms. Large inputs run
        compiled. No gradient of its own (``product_sum.product_of``)."""
        compiled = (compiles_layer(int(np.prod(self.resolved.in_shape)), self.n_pixels)
                    and not tracing_for_xla())
        from_logs = self._forward_from_logs_fn if compiled else self._forward_from_logs
        multiplied = self._forward_multiplied_fn if compiled else self._forward_multiplied
        return self._multiplied_where_safe(self._separable(), multiplied, from_logs, s, m,
                                           log_floor, compiled)

    def _forward_from_logs(self, s, m):
        return self._forward(tf.math.log(s) + m)

    def _forward_multiplied(self, s, m):
        s, m = self._normalised_children(s, m)
        return tf.math.log(s) + m

    def _scaled_log_impl(self, s, m):
        return self._scaled_impl(tf.math.log(s) + m)

    def _scaled_linear_impl(self, s, m):
        if self._separable():
            return self._normalised_children(s, m)
        s, m = _normalised(s, m)
        p = None
        for c in self._children(s, pad_value=1.0):
            p = c if p is None else p * c
        return p, tf.add_n(self._children(m))

    def _normalised_children(self, s, m):
        """A ``_separable`` product of ``log(s) + m`` with each child divided by its
        maximum over the channels, as ``(p, m)``: ``_normalised``, then the product.

        Under XLA in one pass, each child scaled inside it (``_windowed``): whole forward
        pass, batch 64, A/B in alternating processes, Olivetti net 117.5-121.6 ->
        113.7-117.8 ms, MNIST inpainting net 22.0-25.7 -> 20.9-24.4 ms (batch 128:
        45.0-49.9 -> 42.4-44.2). TensorFlow's kernels copy every slice, and took the one
        pass 10-20 % slower than the axes one after the other (d=2 and d=16 layers of the
        MNIST inpainting net, batch 64). Outside XLA, as ``_normalised``: the children
        scaled first, then combined."""
        top = tf.reduce_max(s, axis=-1, keepdims=True)
        return (self._along_axes(s, tf.multiply, 1.0, scale=tf.math.reciprocal(top)),
                self._along_axes(m + tf.math.log(top), tf.add, 0.0))

    def _separable(self):
        """Whether the product is depthwise with unit strides: its kernel is then the
        product of its axes' kernels, and it can be taken one axis after the other
        (``_along_axes``)."""
        return (self.mode == "depthwise" and len(self.offsets) > 1
                and all(op.stride == 1 for op in self.axes))

    def _along_axes(self, x, combine, fill, transpose=False, scale=None):
        """A ``_separable`` product's children combined by ``combine`` (``tf.add`` of
        log-values, padding 0; ``tf.multiply`` of values, padding 1), first along the
        rows, then along the columns: ``[H_in, W_in, B, C]`` -> ``[H_out, W_out, B, C]``;
        with ``transpose``, the transpose of the sum (``[H_out, W_out, ...]`` ->
        ``[H_in, W_in, ...]``). Two combinations per output instead of three for a 2x2
        kernel, and no padded copy of the input. ``scale``: the children taken as
        ``x * scale``.

        In code compiled by XLA (``compiled_by_xla``) the product (not its transpose) is
        taken over both axes in one pass instead (``_windowed``; see
        ``_normalised_children`` for why only there)."""
        if not transpose and compiled_by_xla():
            return self._windowed(x, combine, fill, scale=scale)
        if scale is not None:
            x = x * scale
        sizes = self.resolved.in_shape if transpose else self.out_shape
        for axis, (bases, n_out) in enumerate(zip(self._axis_bases(transpose), sizes)):
            x = _combine_along(x, axis, bases, n_out, combine, fill)
        return x

    def _windowed(self, x, combine, fill, scale=None):
        """``_along_axes`` (not transposed) in one pass over both axes
        (``_combine_window``), for code compiled by XLA; ``scale``: each child taken as
        ``x * scale``."""
        return _combine_window(x, self._axis_bases(), self.out_shape, combine, fill, scale)

    def _axis_bases(self, transpose=False):
        """Per axis, the input offset of each kernel position from an output cell (of
        each output offset from an input cell, with ``transpose``)."""
        bases = []
        for op in self.axes:
            b = [op.out_start + a * op.dilation - op.pad_before for a in range(op.kernel)]
            bases.append([-v for v in b] if transpose else b)
        return bases

    def _pads_or_crops(self):
        return any(op.pad_before or op.pad_after or op.out_start or op.stride != 1
                   for op in self.axes)

    def _forward(self, x):
        if self._separable():
            return self._along_axes(x, tf.add, 0.0)
        children = self._children(x)
        if len(children) == 1:
            return children[0]
        if self.mode == "depthwise":
            return tf.add_n(children)
        if self.channel_index is not None:
            return tf.add_n([tf.gather(c, self.channel_index[i], axis=-1)
                             for i, c in enumerate(children)])
        # All combinations: broadcast child i along its own channel axis, then flatten.
        n = len(children)
        out = None
        for i, c in enumerate(children):
            shape = [1] * n
            shape[i] = self.in_channels
            term = tf.reshape(c, tf.concat([tf.shape(c)[:3], shape], 0))
            out = term if out is None else out + term
        return tf.reshape(out, tf.concat([tf.shape(out)[:3], [self.out_channels]], 0))

    # ------------------------------------------------------------------ backward
    # Autodiff of strided slices (StridedSliceGrad) writes one zero-filled, padded-size
    # tensor per child and is a slow generic kernel on CPU: it took ~90 % of a hard-EM step
    # (benchmarks/formulations.py: depthwise d=16 forward+backward 1031 ms -> 52 ms with the
    # hand-written transpose below). The transpose of "sum of shifted slices" is a sum of
    # oppositely shifted windows of the incoming gradient (unit strides), or an interleave
    # of the per-offset gradients (non-overlapping layers, stride = kernel).

    def _backward_kind(self):
        if all(op.stride == 1 for op in self.axes):
            return "shift"
        if all(op.stride == op.kernel and op.dilation == 1 for op in self.axes):
            return "interleave"
        return None  # other geometries: TensorFlow's autodiff

    def _channel_grads(self, g):
        """Gradient reaching each child's channels, one ``[H_out, W_out, B, C_in]`` per offset."""
        n = len(self.offsets)
        if self.mode == "depthwise" or n == 1:
            return [g] * n
        # Child i's channel a receives the sum over the output channels whose i-th digit is
        # a: one matmul with a 0/1 matrix [C_out, n * C_in] for all children. For the 256
        # channels of the MNIST inpainting net's first product (batch 128) 15 ms, against
        # 64 ms as sums over the other children's axes of [..., 4, 4, 4, 4] under XLA (86 ms
        # without), which the soft backward pass (imputation, Adam) runs.
        return self._digit_grads(g)

    def _digit_grads(self, g, n_children=None):
        """``_channel_grads`` of a one-hot product, or (``n_children``) of the combinations
        of its first ``n_children`` children, by one matmul with ``_digit_matrix``."""
        matrix = self._digit_matrix(g.dtype, n_children)
        c_in = self.in_channels
        n = matrix.shape[1] // c_in
        grads = tf.matmul(tf.reshape(g, [-1, matrix.shape[0]]), matrix)
        grads = tf.reshape(grads, tf.concat([tf.shape(g)[:3], [n * c_in]], 0))
        return [grads[..., i * c_in:(i + 1) * c_in] for i in range(n)]

    def _digit_matrix(self, dtype, n_children=None):
        """``[C_out, n * C_in]``: 1 where output channel c takes channel a of child i
        (column ``i * C_in + a``). ``n_children``: for all combinations of the first
        ``n_children`` children instead (``[C_in ** n_children, n_children * C_in]``)."""
        n, c_in = n_children or len(self.offsets), self.in_channels
        if self.channel_index is not None and n_children is None:
            digits = self._subset_digits  # [n, C_out]
        else:  # all combinations
            digits = self.combination_digits(np.arange(c_in ** n), n)
        rows = len(digits[0])
        matrix = np.zeros((rows, n * c_in), dtype.as_numpy_dtype)
        for i in range(n):
            matrix[np.arange(rows), i * c_in + digits[i]] = 1
        return tf.constant(matrix)

    @staticmethod
    def _window(t, starts, sizes):
        """``t[starts[0]:starts[0]+sizes[0], starts[1]:...]`` with zeros outside ``t``."""
        pads, begins = [], []
        for axis, (start, size) in enumerate(zip(starts, sizes)):
            n = t.shape[axis]
            before, after = max(0, -start), max(0, start + size - n)
            pads.append([before, after])
            begins.append(start + before)
        if any(p != [0, 0] for p in pads):
            t = tf.pad(t, pads + [[0, 0], [0, 0]])
        return t[begins[0]:begins[0] + sizes[0], begins[1]:begins[1] + sizes[1]]

    def backward(self, g, factor=None, s_in=None):
        """The transpose of the forward pass: signal ``[H_out, W_out, B, C_out]`` at the
        output to ``[H_in, W_in, B, C_in]`` at the input (unit strides or stride = kernel).

        ``factor`` (shaped as ``g``): transpose ``factor * g`` instead. ``s_in`` (shaped as
        the input): return the signal divided by it, the signal of the input's ``s`` rather
        than of its log-values (``product_sum.ScaledValues.linear_signal``). Both happen
        inside the transpose's (compiled) pass, so the soft backward pass of a fused
        layer writes neither ``p * u`` nor the undivided signal (``product_sum``).
        """
        fn = self._backward_fn if self.compile_large else self._backward
        return fn(g, factor, s_in)

    def _backward(self, g, factor=None, s_in=None):
        signal = self.transpose(self._channel_grads(g if factor is None else g * factor))
        return signal if s_in is None else signal / s_in

    def factored_backward(self, dq, de):
        """``backward`` of a product taken as ``factored_scaled``'s factors, from the signals
        of their log-values: ``dq`` ``[H_out, W_out, B, C_in ** (n - 1)]`` (all children
        but the last) and ``de`` ``[H_out, W_out, B, C_in]`` (the last child's own)."""
        fn = self._factored_backward_fn if self.compile_large else self._factored_backward
        return fn(dq, de)

    def _factored_backward(self, dq, de):
        return self.transpose(self._digit_grads(dq, len(self.offsets) - 1) + [de])

    def transpose(self, grads):
        """The signal at the input ``[H_in, W_in, B, C_in]`` from the signal reaching each
        child, one ``[H_out, W_out, B, C_in]`` per kernel offset (``self.offsets``)."""
        in_shape = self.resolved.in_shape
        if self._separable() and all(g is grads[0] for g in grads):
            return self._along_axes(grads[0], tf.add, 0.0, transpose=True)
        if self._backward_kind() == "shift":
            # Input cell i (padded position i + pad_before) receives output o = i + shift_a.
            terms = []
            for offset, g_a in zip(self.offsets, grads):
                shifts = [op.pad_before - op.out_start - a * op.dilation
                          for op, a in zip(self.axes, offset)]
                terms.append(self._window(g_a, shifts, in_shape))
            return tf.add_n(terms)
        # Interleave: padded position o * k + a holds output o's child at offset a.
        kh, kw = (op.kernel for op in self.axes)
        stacked = tf.stack(grads, axis=0)  # [kh * kw, H_out, W_out, B, C]
        shape = tf.shape(stacked)
        stacked = tf.reshape(stacked, tf.concat([[kh, kw], shape[1:]], 0))
        region = tf.transpose(stacked, [2, 0, 3, 1, 4, 5])  # [H_out, kh, W_out, kw, B, C]
        region = tf.reshape(region, tf.concat(
            [[self.out_shape[0] * kh, self.out_shape[1] * kw], shape[3:]], 0))
        starts = [op.pad_before - op.out_start * op.stride for op in self.axes]
        return self._window(region, starts, in_shape)
