"""A product and the spatial sum after it, as one routing op.

A sum needs its children only as ``(p, m)``: their log-values ``log(p) + m`` with ``m``
per cell and ``p`` scaled to a maximum of 1, or at most 1 where that cannot underflow
(``sums.log_matmul_exp``, ``Product.scaled_from``). ``Product.scaled`` forms that in one
pass (compiled by XLA for large layers), so the product's log-values are never written and
taken apart again. For a one-hot product of all channel combinations (4 components and a
2x2 kernel: 256 channels per cell) ``p`` is a product of the children's exponentials:
``C_in`` exponentials per input cell instead of ``C_in ** 4``.

The backward pass is the routing sum op's (``sums.choose`` / ``sums.soft_signals``, as in
``sums.routed_sum``) followed by the product's transpose, so EM counts, MPE, sampling and
posteriors are those of the separate layers (``tests/test_core_inference.py`` compares
both against brute force and each other). Hard choices reach a one-hot product's children
as the digits of the chosen channel, without a one-hot tensor over all combinations.

The 256-channel product of the MNIST inpainting net and its max-scaled exponentials took
108 ms as log-values (broadcast add, max, exp) and 35 ms as a product of exponentials
(batch 128, CPU). Where it pays, the sum takes such a product in two factors instead
(``sums.factored_matmul``: the product over all children but the last, and the last
child), and ``p`` is not written at all; see benchmarks/README.md for whole-network
figures.

The sum's output leaves the op as ``ScaledValues`` (``s = p @ w`` and ``m``), not as
log-values: a fused layer above multiplies the ``s`` of its children, and the logs are
taken only where a plain layer needs log-values (``to_log_values``, ``product_of``).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import tensorflow as tf

from .sums import (LOG_ZERO, SOFT_ROUTINGS, _stable_max, _weighted_scores, choose,
                   factored_matmul, factored_soft_route, routing_keys, scaled_matmul,
                   soft_signals, unweighted_choice_by_child)


#: ``product_sum(forward_only=True)`` takes a depthwise product and its sum in one pass
#: (``Product.summed_from``) for sums over at most this many channels per cell. XLA's
#: fused reduction forms each product once per output channel and its time grows steeply
#: with the reduced channels: a d=8 layer of the Olivetti net with its sum, batch 64
#: (CPU, one-off), 16 -> 16 channels 11.8-13.0 ms as the product's pass and a matmul
#: against 8.2-8.3 ms in one pass, 16 -> 128 32.0-32.6 against 25.2-25.6, but 24 -> 16
#: 14.7-18.0 against 21.7-22.3, 32 -> 32 20-21 against 66-67, 64 -> 64 46-47 against
#: 920-960 (the MNIST classifier's sums: its forward pass 11x slower).
SUMMED_MAX_IN_CHANNELS = 16


class ScaledValues(NamedTuple):
    """A fused layer's output, the log-values ``log(s) + m``, kept in two parts.

    The next fused layer multiplies the ``s`` directly (``Product.scaled_from``), so the
    log of every value is never taken between fused layers; ``to_log_values`` forms the
    log-values where a plain layer needs them.

    Gradient convention: the gradient (or routed signal) that these ops pass for ``s`` is
    the one with respect to the log-values ``log(s) + m``, or, where ``linear_signal``
    is set, with respect to ``s`` itself (``g / s``); the one for ``m`` is unused (zero).
    Both ends of every pair are ops of this module, which keep to it, so the gradients
    outside (at the leaves and the log-weights) are the true ones. The soft routings (the
    gradient, soft EM, imputation) set ``linear_signal``: their backward pass divides by
    ``s`` anyway (``sums.soft_signals``), and the consumer divides inside its product's
    transpose (``Product.backward``) instead of the producer in a pass of its own. Hard
    routings pass win counts, which are no gradients of ``s``, and dividing them would
    overflow where ``s`` is tiny.
    """

    s: tf.Tensor  # [H, W, B, C], positive (Product.scaled_from keeps it from underflowing)
    m: tf.Tensor  # [H, W, B, 1]
    # [H, W, 1, C] or [1, 1, 1, C]: a lower bound of log(s / max(s)) per cell and channel,
    # the maximum over the channels of each cell and sample (see Product.scaled_from)
    log_floor: tf.Tensor
    # the producer takes the signal of s itself, not of the log-values (convention above)
    linear_signal: bool = False


def to_log_values(x):
    """The log-values of ``x``: ``log(s) + m`` for ``ScaledValues``, a tensor as it is."""
    if not isinstance(x, ScaledValues):
        return x

    @tf.custom_gradient
    def op(s, m):
        def grad(g):
            # the ScaledValues gradient convention
            return (g / s if x.linear_signal else g), tf.zeros_like(m)
        return tf.math.log(s) + m, grad

    return op(x.s, x.m)


def product_of(product, x):
    """``product(to_log_values(x))``, from ``ScaledValues`` in one pass where it can."""
    if not isinstance(x, ScaledValues) or product._backward_kind() is None:
        return product(to_log_values(x))

    @tf.custom_gradient
    def op(s, m):
        def grad(g):  # the ScaledValues convention
            return (product.backward(g, s_in=s if x.linear_signal else None),
                    tf.zeros_like(m))
        return product.forward_from_scaled(s, m, x.log_floor), grad

    return op(x.s, x.m)


def product_sum(product, spatial_sum, x, log_w, routing="gradient", keys=None, w=None,
                log_w_min=None, keep=None, forward_only=False):
    """``spatial_sum(product(x), log_w, routing, ...)`` for a ``product.scalable`` product.

    Parameters
    ----------
    product : Product
        A product with a hand-written transpose (``product.scalable``).
    spatial_sum : SpatialSum
        The sum layer after it.
    x : Tensor ``[H_in, W_in, B, C_in]`` or ScaledValues
        Log-values of the product's input, or the output of the fused layer below.
    log_w : Tensor ``[N | 1, C, C_out]``
        The sum's normalised log-weights.
    routing, keys, w
        As ``sums.routed_sum``.
    log_w_min : Tensor ``[N | 1, C_out]``, optional
        ``reduce_min(log_w, axis=1)``, if the caller has it.
    keep : bool Tensor ``[H_out, W_out, B, C]``, optional
        Product dropout (soft routings only): the product's outputs where it is False are
        dropped, value 0 (log 0), as ``DGCSPN.forward_from_leaves`` drops them between
        separate layers.
    forward_only : bool
        The value only (queries): a depthwise product from a fused layer below then
        reaches the sum in one compiled pass that never writes its outputs
        (``Product.summed_from``); differentiating such a value is an error.

    Returns
    -------
    ScaledValues of shapes ``[H_out, W_out, B, C_out]`` and ``[H_out, W_out, B, 1]``:
        the log-values of the sum (``to_log_values``); with ``linear_signal`` for the
        soft routings.
    """
    if not product.scalable:
        raise ValueError(f"{product.name} cannot be fused with the sum after it")
    (h_out, w_out), n_cells = product.out_shape, spatial_sum.n_cells
    c_in, c_out = spatial_sum.in_channels, spatial_sum.out_channels
    scaled_input = isinstance(x, ScaledValues)
    # the signal this op receives for its output's s, and passes for its input's
    # (the ScaledValues convention)
    soft = routing in SOFT_ROUTINGS
    if keep is not None and not soft:
        raise ValueError(f"product dropout in a fused layer needs a soft routing, got "
                         f"{routing!r}")
    linear_in = scaled_input and x.linear_signal
    batch = tf.shape(x.s if scaled_input else x)[2]
    keys = routing_keys(routing, keys, batch)
    shared = log_w.shape[0] == 1 and n_cells != 1
    # Every output s_o is at least max(p) times the weight of the child at that maximum,
    # and max(s) is at most max(p) (the weights into o sum to 1): s_o / max(s) is at
    # least min_i w_io of its cell (also for max routing below).
    log_floor = tf.stop_gradient(
        tf.reduce_min(log_w, axis=1) if log_w_min is None else log_w_min)
    log_floor = tf.reshape(log_floor, [1, 1, 1, c_out] if shared else [h_out, w_out, 1, c_out])
    if (forward_only and soft and scaled_input and keep is None and product.mode == "depthwise"
            and product.compile_large and c_in <= SUMMED_MAX_IN_CHANNELS):
        s_out, m_out = _value_only(product, x, tf.exp(log_w) if w is None else w)
        return ScaledValues(tf.reshape(s_out, [h_out, w_out, batch, c_out]), m_out, log_floor,
                            linear_signal=soft)
    given_w = w
    # A one-hot product of all combinations reaches the sum as two factors
    # (sums.factored_matmul), so its C ** n channels are never written, where no pass
    # needs them: the value, the soft backward pass (factored_soft_route) and unweighted
    # choices (made child by child). Max, weighted and sampled choices compare the
    # channels, and form them once, in the forward pass.
    factored = (not scaled_input and keep is None
                and (soft or routing == "hard_unweighted")
                and _factoring_pays(product, c_out))

    def layer(inputs, log_w):
        if factored:
            q, e, m = product.factored_scaled(*inputs)
            q = tf.reshape(q, [n_cells, batch, c_in // product.in_channels])
            e = tf.reshape(e, [n_cells, batch, product.in_channels])
            p = None
        elif scaled_input:
            p, m = product.scaled_from(*inputs, x.log_floor)
        else:
            p, m = product.scaled(*inputs)
        if p is not None:
            p = tf.reshape(p, [n_cells, batch, c_in])
            if keep is not None:  # dropped products are 0; so is their signal (factor p)
                p = tf.where(tf.reshape(keep, [n_cells, batch, c_in]), p, 0.0)
        m = tf.reshape(m, [n_cells, batch, 1])
        lw = tf.broadcast_to(log_w, [n_cells, c_in, c_out])
        w = tf.exp(log_w) if given_w is None else given_w
        if routing == "max":
            out = tf.reduce_max(_weighted_scores(tf.math.log(p), lw), axis=2)
            top = _stable_max(out, -1)
            s_out, m_out = tf.exp(out - top), m + top
        else:
            if factored:
                s, t = factored_matmul(q, e, w)
            else:
                s = scaled_matmul(p, w)
            s_out, m_out = s, m
            if keep is not None:
                # A cell and sample whose products were all dropped has the value log 0:
                # kept as s = 1 with m = LOG_ZERO, the separate layers' finite log 0
                # (s = 0 would make its log and the next layer's scaling infinite).
                dead = tf.reduce_max(s, axis=-1, keepdims=True) <= 0.0
                s_out = tf.where(dead, 1.0, s)
                m_out = tf.where(dead, LOG_ZERO, m)

        def grad(g_s, g_m=None):
            del g_m  # unused: the ScaledValues gradient convention
            # soft: r = g / s, the signal of s (linear_signal); else that of the log-values
            g = tf.reshape(g_s, [n_cells, batch, c_out])
            if factored and soft:
                dq, de, dlw = factored_soft_route(q, e, t, w, g)
                dx = product.factored_backward(
                    tf.reshape(dq, [h_out, w_out, batch, c_in // product.in_channels]),
                    tf.reshape(de, [h_out, w_out, batch, product.in_channels]))
            elif soft:
                # the children's log-values receive p * u, which the product's transpose
                # multiplies (and divides by the input's s, for a linear_signal input)
                # in its own pass
                u, dlw = soft_signals(p, w, g)
                shape = [h_out, w_out, batch, c_in]
                dx = product.backward(tf.reshape(u, shape), factor=tf.reshape(p, shape),
                                      s_in=inputs[0] if linear_in else None)
            else:
                backward = _backward
                # Hard choices (max, compare, select, argmax, one-hot, shifted windows)
                # fuse well under XLA; the soft pass is mostly batched matmuls, which XLA
                # ran slower, and compiles only its product's transpose.
                if product.compile_large:
                    backward = _COMPILED.get(product)
                    if backward is None:
                        backward = _COMPILED[product] = tf.function(
                            _backward, jit_compile=True, autograph=False)
                # the product's input log-values, up to a constant per cell: for choices
                # made child by child (sums.unweighted_choice_by_child)
                x_in = None
                if routing == "hard_unweighted" and product.combinations() is not None:
                    x_in = tf.math.log(inputs[0]) if scaled_input else inputs[0]
                dx, dlw = backward(product, routing, p, lw, g, keys, x_in)
                if linear_in:  # not met in one network: all its layers route alike
                    dx = dx / inputs[0]
            if shared:
                dlw = tf.reduce_sum(dlw, axis=0, keepdims=True)
            if scaled_input:  # the signal goes to s (the ScaledValues convention)
                return dx, tf.zeros_like(inputs[1]), dlw
            return dx, dlw

        return (tf.reshape(s_out, [h_out, w_out, batch, c_out]),
                tf.reshape(m_out, [h_out, w_out, batch, 1])), grad

    if scaled_input:
        op = tf.custom_gradient(lambda s, m, log_w: layer((s, m), log_w))
        s_out, m_out = op(x.s, x.m, log_w)
    else:
        op = tf.custom_gradient(lambda x, log_w: layer((x,), log_w))
        s_out, m_out = op(x, log_w)
    return ScaledValues(s_out, m_out, log_floor, linear_signal=soft)


def _value_only(product, x, w):
    """``product.summed_from`` of ``ScaledValues`` ``x``, with a gradient that refuses."""
    @tf.custom_gradient
    def op(s, m, w):
        def grad(*_):
            raise ValueError("product_sum(forward_only=True) computes a value without a "
                             "backward pass; differentiate a pass with forward_only=False")
        return product.summed_from(s, m, x.log_floor, w), grad

    return op(x.s, x.m, w)


def _factoring_pays(product, c_out):
    """Whether the sum after ``product`` takes it in two factors (``sums.factored_matmul``):
    for a one-hot product of all combinations of ``n`` children with ``C`` channels when
    the two factors, ``C ** (n - 1) + C * C_out`` values per cell and sample, are fewer
    than its ``C ** n`` channels (2x2 kernels over 4 components with 16 sums: 128
    against 256; a 1 x 2 kernel: 68 against 16)."""
    combinations = product.combinations()
    if combinations is None:
        return False
    c, n = combinations
    return c ** (n - 1) + c * c_out < c ** n


def _backward(product, routing, p, lw, g, keys, x_in=None):
    """Signal at the product's input and counts of the sum under a hard or sampling
    ``routing``, for ``g`` ``[N, B, C_out]``; ``x_in``: the product's input log-values (up
    to a constant per input cell), for unweighted choices over a one-hot product of all
    combinations (``p`` is then unused and may be None)."""
    n_cells, batch, c_out = tf.unstack(tf.shape(g))
    c_in = product.out_channels
    if x_in is not None:  # child by child, from the children's own values
        children = [tf.reshape(c, [n_cells, batch, product.in_channels])
                    for c in product._children(x_in)]
        sel = unweighted_choice_by_child(children, keys)
        signal = tf.reduce_sum(g, axis=-1, keepdims=True)
    else:
        # log p differs from the product's log-values by m, constant per (cell, sample):
        # the same choices. Unweighted choices compare p itself (no log of [N, B, C_in]).
        scores = p if routing == "hard_unweighted" else tf.math.log(p)
        sel, signal = choose(scores, lw, g, keys, routing)
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
    if product.combinations() is not None:
        radix = product.in_channels
        shape = tf.concat([[h_out, w_out], batch, [radix]], 0)
        return [tf.reshape(tf.one_hot(digit, radix) * signal, shape)
                for digit in product.combination_digits(sel)]
    onehot = tf.one_hot(sel, product.out_channels) * signal
    return product._channel_grads(
        tf.reshape(onehot, tf.concat([[h_out, w_out], batch, [product.out_channels]], 0)))
