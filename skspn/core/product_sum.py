"""A product and the spatial sum after it, as one routing op.

A sum needs its children only as ``(p, m)``: the max-scaled exponentials and the maximum
per cell (``sums.log_matmul_exp``). ``Product.scaled`` forms exactly that in one pass
(compiled by XLA for large layers), so the product's log-values are never written and
taken apart again. For a one-hot product of all channel combinations (4 components and a
2x2 kernel: 256 channels per cell) ``p`` is a product of the children's exponentials:
``C_in`` exponentials per input cell instead of ``C_in ** 4``.

The backward pass is the routing sum op's (``sums.choose`` / ``sums.soft_route``, as in
``sums.routed_sum``) followed by the product's transpose, so EM counts, MPE, sampling and
posteriors are those of the separate layers (``tests/test_core_inference.py`` compares
both against brute force and each other). Hard choices reach a one-hot product's children
as the digits of the chosen channel, without a one-hot tensor over all combinations.

The 256-channel product of the MNIST inpainting net and its max-scaled exponentials took
108 ms as log-values (broadcast add, max, exp) and 35 ms as a product of exponentials
(batch 128, CPU); see benchmarks/README.md for whole-network figures.
"""

from __future__ import annotations

import weakref

import tensorflow as tf

from .sums import _weighted_scores, choose, routing_keys, scaled_matmul, soft_route


def product_sum(product, spatial_sum, x, log_w, routing="gradient", keys=None):
    """``spatial_sum(product(x), log_w, routing, ...)`` for a ``product.scalable`` product.

    Parameters
    ----------
    product : Product
        A product with a hand-written transpose (``product.scalable``).
    spatial_sum : SpatialSum
        The sum layer after it.
    x : Tensor ``[H_in, W_in, B, C_in]``
        Log-values of the product's input.
    log_w : Tensor ``[N | 1, C, C_out]``
        The sum's normalised log-weights.
    routing, keys
        As ``sums.routed_sum``.

    Returns
    -------
    Tensor ``[H_out, W_out, B, C_out]``
    """
    if not product.scalable:
        raise ValueError(f"{product.name} cannot be fused with the sum after it")
    (h_out, w_out), n_cells = product.out_shape, spatial_sum.n_cells
    c_in, c_out = spatial_sum.in_channels, spatial_sum.out_channels
    batch = tf.shape(x)[2]
    keys = routing_keys(routing, keys, batch)
    shared = log_w.shape[0] == 1 and n_cells != 1

    @tf.custom_gradient
    def op(x, log_w):
        p, m = product.scaled(x)
        p = tf.reshape(p, [n_cells, batch, c_in])
        m = tf.reshape(m, [n_cells, batch, 1])
        lw = tf.broadcast_to(log_w, [n_cells, c_in, c_out])
        w = tf.exp(log_w)
        if routing == "max":
            s = None
            out = tf.reduce_max(_weighted_scores(tf.math.log(p), lw), axis=2) + m
        else:
            s = scaled_matmul(p, w)
            out = tf.math.log(s) + m

        def grad(g):
            g = tf.reshape(g, [n_cells, batch, c_out])
            backward = _backward
            # Hard choices (max, compare, select, argmax, one-hot, shifted windows) fuse
            # well under XLA; the soft pass is mostly batched matmuls, which XLA ran slower.
            if product.compile_large and routing not in ("gradient", "soft"):
                backward = _COMPILED.get(product)
                if backward is None:
                    backward = _COMPILED[product] = tf.function(
                        _backward, jit_compile=True, autograph=False)
            dx, dlw = backward(product, routing, p, w, s, lw, g, keys)
            if shared:
                dlw = tf.reduce_sum(dlw, axis=0, keepdims=True)
            return dx, dlw

        return tf.reshape(out, [h_out, w_out, batch, c_out]), grad

    return op(x, log_w)


def _backward(product, routing, p, w, s, lw, g, keys):
    """Signal at the product's input and counts of the sum, for ``g`` ``[N, B, C_out]``."""
    n_cells, batch, c_in = tf.unstack(tf.shape(p))
    c_out = tf.shape(g)[2]
    if routing in ("gradient", "soft"):
        dx, dlw = soft_route(p, w, s, g)
        h_out, w_out = product.out_shape
        return product.backward(tf.reshape(dx, [h_out, w_out, batch, c_in])), dlw
    # log p differs from the product's log-values by m, constant per (cell, sample): the
    # same choices.
    sel, signal = choose(tf.math.log(p), lw, g, keys, routing)
    dx = product.transpose(_child_signals(product, sel, signal))
    # Counts: the signal of channel o* goes to (sel, o*); a segment sum, as a one-hot
    # matmul would write [N, B, C_in] again.
    ids = tf.range(n_cells)[:, None] * c_in + sel
    dlw = tf.math.unsorted_segment_sum(
        tf.reshape(g, [-1, c_out]), tf.reshape(ids, [-1]), n_cells * c_in)
    return dx, tf.reshape(dlw, [n_cells, c_in, c_out])


#: XLA-compiled ``_backward`` per large product (see ``Product.compile_large``).
_COMPILED = weakref.WeakKeyDictionary()


def _child_signals(product, sel, signal):
    """Signal reaching each child of the product from the chosen output channels ``sel``
    ``[N, B]``, one ``[H_out, W_out, B, C_in]`` per kernel offset.

    For a one-hot product of all combinations the mixed-radix digits of ``sel`` (first
    child most significant) are the children's channels, so no ``[N, B, C_out]`` one-hot
    tensor is formed; other products take the one-hot signal through ``_channel_grads``.
    """
    h_out, w_out = product.out_shape
    batch = tf.shape(sel)[1:2]
    if product.mode == "one_hot" and product.channel_index is None:
        n, radix = len(product.offsets), product.in_channels
        shape = tf.concat([[h_out, w_out], batch, [radix]], 0)
        return [tf.reshape(tf.one_hot((sel // radix ** (n - 1 - i)) % radix, radix) * signal,
                           shape) for i in range(n)]
    onehot = tf.one_hot(sel, product.out_channels) * signal
    return product._channel_grads(
        tf.reshape(onehot, tf.concat([[h_out, w_out], batch, [product.out_channels]], 0)))
