"""Sum layers and the routing sum op.

Layout is cells-major ``[N_cells, B, C]``: a per-cell (unshared) sum is then one batched
matmul ``[N, B, C_in] @ [N, C_in, C_out]`` without any transpose.

The routing sum op is the single mechanism behind EM counts, MPE and sampling. Its
forward pass is the log-sum-exp of weighted children (or their max, for MPE); its
backward pass sends the incoming signal to the children, chosen per call:

``gradient`` / ``soft``
    the true gradient: the signal is split by the child posteriors, so the gradient with
    respect to the log-weights is the expected counts (soft EM) and the gradient at the
    leaves is the posterior of every component given the evidence.
``hard``
    the whole signal goes to the child with the largest *weighted* value (hard EM).
``hard_unweighted``
    the whole signal goes to the child with the largest *unweighted* value (USI).
``sample``
    the whole signal goes to a child drawn with probability ``w_i C_i / S`` (Gumbel-max).
``max``
    forward is max-product; backward goes to the weighted argmax (MPE).

Ties are broken uniformly at random (``max``: at the first maximiser, so that an MPE does
not depend on the rest of the batch), which matters when children are exactly equal
(e.g. components of a marginalised pixel or of a padded border cell); ``hard_unweighted``
over a one-hot product of all combinations in a large (compiled) layer chooses, and breaks
ties, child by child (``unweighted_choice_by_child``). All random draws are keyed by the
sample's index in the global batch (``keyed_random``), so a batch split over replicas
routes every sample as the whole batch on one device would.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from . import keyed_random

ROUTINGS = ("gradient", "soft", "hard", "hard_unweighted", "sample", "max")

#: The routings whose backward pass is the true gradient (Adam, soft EM, imputation): the
#: signal is split by the posteriors, nothing is chosen or drawn.
SOFT_ROUTINGS = frozenset({"gradient", "soft"})

#: The routings whose values or choices read the log-weights (weighted choices and draws,
#: the max-product pass). The others read only the linear weights (given, or the
#: exponential of the log-weights): for them the tensor given as log-weights is only what
#: their gradients, the counts, are taken with respect to (``DGCSPN.em_counts``).
READS_LOG_WEIGHTS = frozenset({"hard", "sample", "max"})

#: Finite stand-in for log(0): product dropout sets outputs to this. A finite value
#: keeps max-subtraction and gradients free of inf - inf.
LOG_ZERO = -1e30


def _stable_max(x, axis):
    m = tf.stop_gradient(tf.reduce_max(x, axis=axis, keepdims=True))
    return tf.where(tf.math.is_finite(m), m, tf.zeros_like(m))


def log_matmul_exp(x, log_w, w=None):
    """``log(exp(x) @ exp(log_w))`` per cell without materialising ``[N, B, C_in, C_out]``.

    Parameters
    ----------
    x : Tensor ``[N, B, C_in]``
    log_w : Tensor ``[N, C_in, C_out]`` or ``[1, C_in, C_out]`` (shared over cells)
    w : Tensor, optional
        ``exp(log_w)``, when the caller has it already (a query over many batches takes
        it once, see ``DGCSPN.normalised_weights``).
    """
    m = _stable_max(x, -1)
    return tf.math.log(scaled_matmul(tf.exp(x - m), exp_of(log_w, w))) + m


def exp_of(log_w, w=None):
    """``exp(log_w)``; or ``w``, its value computed beforehand, with the gradient of the
    exponential, so that gradients reach ``log_w`` (the EM counts) either way."""
    if w is None:
        return tf.exp(log_w)

    @tf.custom_gradient
    def op(log_w):
        return tf.identity(w), lambda g: g * w

    return op(log_w)


def scaled_matmul(p, w):
    """``p @ w`` per cell: ``p`` ``[N, B, C_in]``, ``w`` ``[N | 1, C_in, C_out]``
    (one matrix shared over the cells: a single tensordot)."""
    if w.shape[0] == 1 and p.shape[0] != 1:
        return tf.tensordot(p, w[0], axes=[[2], [0]])
    return tf.matmul(p, w)


def factored_matmul(q, e, w):
    """``p @ w`` per cell for ``p[n, b, r * A + a] = q[n, b, r] * e[n, b, a]``, without
    forming ``p``.

    ``q`` ``[N, B, R]``, ``e`` ``[N, B, A]``, ``w`` ``[N | 1, R * A, C_out]``. Viewed as
    ``[N | 1, R, A * C_out]`` (a reshape, no copy) the weights meet ``q`` in one matmul of
    as many multiply-adds as ``p @ w``, giving ``t`` ``[N, B, A, C_out]``; ``e`` then
    weights its ``A`` blocks. For the first sum of the inpainting nets (``R = 64``,
    ``A = 4``, ``C_out = 16``) that writes 64 + 64 values per cell and sample instead of the
    256 of ``p``: 13-15 against 26-27 ms for ``[841, 128, 256] @ [841, 256, 16]`` with
    ``p``'s product (CPU, one-off).

    Returns ``(s, t)``: ``s = p @ w`` ``[N, B, C_out]``, and ``t`` for
    ``factored_soft_route``.
    """
    n_a, c_out = e.shape[-1], w.shape[-1]
    t = scaled_matmul(q, tf.reshape(w, [-1, w.shape[1] // n_a, n_a * c_out]))
    t = tf.reshape(t, tf.concat([tf.shape(t)[:2], [n_a, c_out]], 0))
    return _weighted_blocks(t, e), t


def factored_soft_route(q, e, t, w, r):
    """``soft_signals`` for ``p`` given as ``factored_matmul``'s two factors, without forming
    ``p`` or any other ``[N, B, R * A]`` tensor.

    With ``r = g / s`` (the signal of ``s`` itself, ``soft_signals``): the signal of
    ``p``'s log-values is ``p * (r @ w^T)``, and summed over each factor's other index it
    is ``dq = q * (w (e r))`` (one matmul against ``w`` viewed ``[N | 1, R, A * C_out]``)
    and ``de = e * (t r)``; the expected counts ``w * (p^T r)`` are ``w * (q^T (e r))``.

    Returns ``(dq [N, B, R], de [N, B, A], dlw [N, R * A, C_out])``: the signals of the
    factors' log-values (a product's children take them as they are) and the counts.
    """
    n_a, c_out = e.shape[-1], w.shape[-1]
    er = tf.reshape(e[..., :, None] * r[..., None, :],
                    tf.concat([tf.shape(r)[:2], [n_a * c_out]], 0))
    w_blocks = tf.reshape(w, [-1, w.shape[1] // n_a, n_a * c_out])
    dq = q * tf.matmul(er, w_blocks, transpose_b=True)
    de = e * tf.reduce_sum(t * r[..., None, :], axis=-1)
    dlw = w * tf.reshape(tf.matmul(q, er, transpose_a=True), [-1, w.shape[1], c_out])
    return dq, de, dlw


@functools.partial(tf.function, jit_compile=True, autograph=False)
def _weighted_blocks(t, e):
    """``sum_a t[n, b, a, o] * e[n, b, a]``, compiled: one pass instead of a multiply and a
    reduction (the matmul before it stays outside XLA, which ran batched matmuls slower)."""
    return tf.reduce_sum(t * e[..., None], axis=2)


def _random_argmax(z, keys):
    """Argmax over the channel axis (last, of ``[N, B, C]``) with exact ties broken at random.

    Tied entries are ranked by random integer priorities drawn per (sample, channel) from
    the per-sample ``keys`` ``[B]``: each tied child wins equally often and samples are
    independent; the cells of one sample share the order. A draw per element of
    ``[N, B, C]`` cost 5x the argmax itself (benchmarks/formulations.py), and ties only
    arise between exactly equal values (e.g. the components of a marginalised pixel).
    """
    is_max = z >= tf.reduce_max(z, axis=2, keepdims=True)
    shape = tf.shape(z)
    n_channels = tf.cast(shape[2], tf.int64)
    # The channel in the priority's low digits makes every priority distinct, so the
    # largest among the tied channels is one plain max and the channel its remainder: an
    # argmax (a reduction over value-index pairs) took 18 against 7.5 ms for
    # [3481, 128, 16] (XLA; 58 against 43 ms for [841, 128, 256]; one-off).
    priority = (keyed_random.bits(keys, tf.stack([1, shape[1], shape[2]]), 1) * n_channels
                + tf.range(n_channels))
    top = tf.reduce_max(tf.where(is_max, priority, -tf.ones_like(priority)), axis=2)
    return tf.cast(top % n_channels, tf.int32)


def _weighted_scores(x, log_w):
    # [N, B, C_in, C_out]: only the max-product forward pass (MPE) needs all of it.
    return x[:, :, :, None] + log_w[:, None, :, :]


#: Salt of the per-child tie-break streams of ``unweighted_choice_by_child`` (folded into a
#: layer's keys; far from the positions ``keyed_random.bits`` hashes).
_CHILD_STREAM = 7_000_000


def unweighted_choice_by_child(child_scores, keys):
    """The unweighted (USI) choice of a sum over a one-hot product of all channel
    combinations, child by child.

    Such a product's channel ``(a_1, ..., a_n)`` (first child most significant) is the
    product of one channel per child, so the largest are those whose every ``a_i`` is one
    of child ``i``'s largest: ``n`` argmaxes over ``C`` channels instead of one over
    ``C ** n`` (the MNIST inpainting net's first sum: 1.2 against 28 ms, XLA, batch 128).
    Exact ties are broken per child, uniformly, keyed per (sample, child) as
    ``_random_argmax``: uniform over the tied combinations, as one draw over them is.

    Parameters
    ----------
    child_scores : list of Tensor ``[N, B, C]``
        Each child's log-values, or those minus a per-(cell, sample) constant.
    keys : Tensor ``[B]``
        The layer's per-sample keys.

    Returns
    -------
    Tensor ``[N, B]`` of int32: the chosen combination's index.
    """
    radix = child_scores[0].shape[-1]
    sel = None
    for i, scores in enumerate(child_scores):
        digit = _random_argmax(scores, keyed_random.fold_in(keys, _CHILD_STREAM + i))
        sel = digit if sel is None else sel * radix + digit
    return sel


def choose(scores, log_w, g, keys, routing, combinations=None):
    """The child that receives each (cell, sample)'s signal under a hard or sampling routing.

    In a valid SPN a hard (or sampled) induced tree reaches each cell through at most
    one of its sums: two parents of the same cell lie in the same layer with overlapping
    scopes, so they cannot both be in a tree whose products have disjoint children.
    Hence per (cell, sample) only the channel ``o*`` carrying the signal needs its argmax,
    which costs ``[N, B, C_in]`` instead of ``[N, B, C_in, C_out]``. Arguments as ``route``.

    Returns
    -------
    sel : Tensor ``[N, B]`` of int32
        The chosen child.
    signal : Tensor ``[N, B, 1]``
        The signal it receives.
    """
    signal = tf.reduce_sum(g, axis=-1, keepdims=True)
    if routing == "hard_unweighted" and combinations is not None:
        # inputs from a one-hot product: each child's scores are the best combinations'
        # with that child's channel (the others' largest added: a constant per cell)
        radix, n = combinations
        shape = tf.shape(scores)
        z = tf.reshape(scores, tf.concat([shape[:2], [radix] * n], 0))
        per_child = [tf.reduce_max(z, axis=[2 + j for j in range(n) if j != i])
                     for i in range(n)]
        return unweighted_choice_by_child(per_child, keys), signal
    z = scores
    if routing != "hard_unweighted":  # weighted: the children's weights into o*
        active = tf.argmax(g, axis=-1, output_type=tf.int32)  # [N, B]
        w_t = tf.transpose(log_w, [0, 2, 1])  # [N, C_out, C_in]
        z = z + tf.gather(w_t, active, axis=1, batch_dims=1)  # [N, B, C_in]
    if routing == "sample":  # Gumbel-max draw
        u = keyed_random.uniform(keys, tf.shape(z), 1)
        return tf.argmax(z - tf.math.log(-tf.math.log(u)), axis=-1, output_type=tf.int32), signal
    if routing == "max":
        # Any maximiser is an MPE; the first one makes a row's MPE completion deterministic,
        # whatever its position in the batch (random tie-breaks are keyed by that position,
        # and ties are common: equal weights over the components of a missing pixel).
        return tf.argmax(z, axis=-1, output_type=tf.int32), signal
    return _random_argmax(z, keys), signal


def route(scores, log_w, g, keys, routing, combinations=None):
    """Backward pass of the hard and sampling routings: where the signal ``g`` goes.

    Parameters
    ----------
    scores : Tensor ``[N, B, C_in]``
        The children's log-values, or those values minus any per-(cell, sample) constant
        (the choices only compare the children of one sum).
    log_w : Tensor ``[N, C_in, C_out]``
        Normalised log-weights (broadcast over cells if shared).
    g : Tensor ``[N, B, C_out]``
        Incoming signal.
    keys : Tensor ``[B]``
        Per-sample keys of the random tie-breaks and draws (``keyed_random``).
    routing : {'hard', 'hard_unweighted', 'sample', 'max'}
    combinations : (C, n), optional
        The inputs are the ``C ** n`` channels of a one-hot product of all combinations of
        ``n`` children's ``C`` channels: unweighted choices are made child by child
        (``unweighted_choice_by_child``).

    Returns
    -------
    dx : Tensor ``[N, B, C_in]``
        Signal reaching each child.
    dlw : Tensor ``[N, C_in, C_out]``
        Signal per weight: the counts.
    """
    sel, signal = choose(scores, log_w, g, keys, routing, combinations)
    onehot = tf.one_hot(sel, tf.shape(scores)[-1], dtype=scores.dtype)  # [N, B, C_in]
    # Counts: the signal of channel o* goes to (sel, o*).
    return onehot * signal, tf.matmul(onehot, g, transpose_a=True)


_compiled_route = tf.function(route, jit_compile=True, autograph=False)


def soft_signals(p, w, r):
    """Backward pass of the soft routing (the true gradient) of ``log(p @ w) + m``.

    ``p`` ``[N, B, C_in]`` are the children's scaled exponentials, ``w`` the weights and
    ``r = g / s`` the signal of ``s = p @ w`` itself (``g``: that of the log-values).
    Returns ``(u, dlw)``: ``u = r @ w^T`` ``[N, B, C_in]``, so that the children's
    log-values receive ``p * u``, the signal split by the child posteriors
    ``p_i w_io / s_o``; and ``dlw``, its total per weight (the expected counts). The last
    multiply is left to the caller: a fused layer receives ``r`` from the layer above and
    multiplies by ``p`` inside its product's transpose (``product_sum``), so neither
    ``g / s`` nor ``p * u`` is a pass of its own.
    """
    return tf.matmul(r, w, transpose_b=True), w * tf.matmul(p, r, transpose_a=True)


def routed_sum(x, log_w, routing="gradient", keys=None, w=None, combinations=None,
               compiled=False):
    """Weighted sums of ``x`` per cell, with the backward pass chosen by ``routing``.

    Parameters
    ----------
    x : Tensor ``[N, B, C_in]``
        Log-values of the children.
    log_w : Tensor ``[N | 1, C_in, C_out]``
        Normalised log-weights.
    routing : str
        One of ``ROUTINGS``.
    keys : Tensor ``[B]`` of int64, optional
        Per-sample keys of the random tie-breaks and draws (``keyed_random.sample_keys``
        of a seed and each sample's index in the global batch). Default: seed 0 and
        indices ``0..B-1``.
    w : Tensor, optional
        ``exp(log_w)`` if the caller has it (``log_matmul_exp``).
    combinations : (C, n), optional
        As ``route``.
    compiled : bool
        Run the hard and sampling routings' backward pass (``route``) compiled by XLA:
        its comparisons, keyed draws and one-hot are elementwise passes that XLA fuses.
        The MNIST inpainting net's top sum (``[1, 128, 16384]``, USI) took 25 ms in
        TensorFlow and 6 ms compiled, the Olivetti net's (``[1, 64, 65536]``) 56 and 13.

    Returns
    -------
    Tensor ``[N, B, C_out]``
    """
    keys = routing_keys(routing, keys, tf.shape(x)[1])
    if routing in SOFT_ROUTINGS:
        return log_matmul_exp(x, log_w, w)
    shared = log_w.shape[0] == 1 and x.shape[0] != 1

    @tf.custom_gradient
    def op(x, log_w):
        lw = tf.broadcast_to(log_w, tf.concat([tf.shape(x)[:1], tf.shape(log_w)[1:]], 0))
        if routing == "max":
            out = tf.reduce_max(_weighted_scores(x, lw), axis=2)
        else:
            out = log_matmul_exp(x, log_w, w)

        def grad(g):
            route_fn = _compiled_route if compiled else route
            dx, dlw = route_fn(x, lw, g, keys, routing, combinations)
            if shared:
                dlw = tf.reduce_sum(dlw, axis=0, keepdims=True)
            return dx, dlw

        return out, grad

    return op(x, log_w)


def routing_keys(routing, keys, batch):
    """Validate ``routing`` and return the per-sample keys of its random draws ``[B]``
    (``keys``, or those of seed 0 and indices ``0..batch-1``; None where the routing
    draws nothing)."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if keys is None and routing not in SOFT_ROUTINGS:
        keys = keyed_random.sample_keys(tf.constant([0, 0], tf.int64), tf.range(batch))
    return keys


class SpatialSum(tf.Module):
    """Per cell, ``C_out`` mixtures over that cell's ``C_in`` channels.

    Parameters
    ----------
    n_cells : int
        Number of cells (weights are unshared per cell unless ``shared``).
    in_channels, out_channels : int
    shared : bool
        One weight matrix for all cells.
    log_space : bool
        Accumulators hold log-weights (gradient learning: weights are their softmax) or
        non-negative counts (EM: weights are ``(c + eps) / sum(c + eps)``,
        ``eps = 1e-2 / C_in``).
    init : ndarray, optional
        Initial accumulators of shape ``[n_cells | 1, C_in, C_out]``.
    """

    def __init__(self, n_cells, in_channels, out_channels, shared=False, log_space=True,
                 init=None, rng=None, name="sum"):
        super().__init__(name=name)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.log_space = bool(log_space)
        self.eps = 1e-2 / self.in_channels
        self.n_cells = int(n_cells)
        shape = (1 if shared else int(n_cells), self.in_channels, self.out_channels)
        if init is None:
            rng = np.random.default_rng(0) if rng is None else rng
            init = default_accumulators(shape, log_space, rng)
        self.accumulator = tf.Variable(np.asarray(init, np.float32).reshape(shape),
                                       name="accumulator")

    def log_weights(self):
        if self.log_space:
            # log_softmax on axis 1: TensorFlow's kernel normalises the last axis only and
            # transposes there and back, in the backward pass too: 18.8 against 13.4 ms
            # forward + backward on the MNIST classifier's last sum ([196, 128, 128]).
            a = self.accumulator
            return a - tf.reduce_logsumexp(a, axis=1, keepdims=True)
        return self._count_weights()[0]

    def _count_weights(self):
        """``(log_w, w, log_w_min)`` of count accumulators (``log_space=False``):
        ``w = c / total`` of the smoothed counts ``c``, its log, and the minimum over the
        children taken of ``w`` (the same number: the log is monotone), so that a caller
        that needs only ``w`` and the minimum forms no log of every weight (unused, it is
        dropped from a compiled graph; ``DGCSPN.em_counts``). ``w`` first, then its log:
        two passes over the weights after the smoothing, where ``log(c) - log(total)`` and
        then ``exp(log_w)`` took three (the online USI step on the Olivetti net:
        benchmarks/README.md)."""
        c = tf.maximum(self.accumulator, 0.0) + self.eps
        w = c * tf.math.reciprocal(tf.reduce_sum(c, axis=1, keepdims=True))
        return tf.math.log(w), w, tf.math.log(tf.reduce_min(w, axis=1))

    def normalised(self):
        """``(log_w, w, log_w_min)``: ``log_weights()``, its exponential and its minimum
        over the children (``[N | 1, C_out]``: each sum's smallest log-weight, which
        bounds its output from below, see ``product_sum``), differentiable with respect to
        the accumulators.

        Log-space accumulators ``a`` (trained by gradients) are normalised with one
        exponential, ``w = exp(a - max) / sum``, where ``log_weights()`` and then
        ``exp(log_w)`` take two and the gradient of ``reduce_logsumexp`` a third; the
        gradient is ``g - w * sum(g)`` over the children (axis 1) with ``g`` the total
        gradient at ``log_w``. Forward and backward over the 5.4M weights of the MNIST
        inpainting net: 23 against 30 ms (CPU, one-off timing; benchmarks/README.md).
        """
        if not self.log_space:
            return self._count_weights()
        return _normalise_log(self.accumulator)

    def __call__(self, x, log_w, routing="gradient", keys=None, w=None, combinations=None):
        """``x`` ``[H, W, B, C_in]`` -> ``[H, W, B, C_out]`` using log-weights ``log_w``
        (and ``w = exp(log_w)`` if the caller has it); ``combinations`` as ``route``.

        The normalised log-weights are passed in (from ``log_weights()``) so that a caller
        can take gradients with respect to them: those gradients are the EM counts.
        """
        shape = tf.shape(x)
        flat = tf.reshape(x, [self.n_cells, shape[2], self.in_channels])
        out = routed_sum(flat, log_w, routing, keys, w, combinations)
        return tf.reshape(out, tf.concat([shape[:3], [self.out_channels]], 0))


def _normalise_log(a):
    """``SpatialSum.normalised`` of log-space accumulators ``a`` ``[N | 1, C_in, C_out]``.

    Only ``log_w`` and its minima leave through the hand-written gradient. Every sum
    takes ``w`` as the value of ``exp(log_w)`` and passes its gradient on to ``log_w``
    (``exp_of``, ``product_sum``), so ``w`` gets none; as a third output of the custom
    gradient it received a zero tensor anyway, which cost three passes over the weights
    in every Adam step (a fill, a multiply and an add). Taken differentiably, ``w`` has
    the gradient of ``e / total`` by ordinary autodiff.
    """
    a = tf.convert_to_tensor(a)  # a variable: read once, not by each op below
    top = tf.stop_gradient(tf.reduce_max(a, axis=1, keepdims=True))
    e = tf.exp(a - top)
    total = tf.reduce_sum(e, axis=1, keepdims=True)
    w = e / total
    log_total = top + tf.math.log(total)

    @tf.custom_gradient
    def log_softmax(a):
        log_w = a - log_total

        def grad(g_log_w, g_min):
            del g_min  # the minimum only bounds values (a stop-gradient quantity)
            return g_log_w - w * tf.reduce_sum(g_log_w, axis=1, keepdims=True)

        return (log_w, tf.reduce_min(log_w, axis=1)), grad

    log_w, log_min = log_softmax(a)
    return log_w, w, log_min


def default_accumulators(shape, log_space, rng):
    """Initial accumulators that keep sibling children distinct from the start.

    Log-space: log-weights drawn from N(0, 2^2). Uniform or mildly perturbed weights make
    every sum an average of similar children, so the spread between the channels of a cell
    shrinks layer by layer until all class sums of a deep network are equal and their
    gradients cancel (the collapse seen with the paper's library). Measured on the paper's
    MNIST classifier at initialisation, spread after sums 1..5 and of the class sums:
    std 0.5: 0.47 / 0.067 / 0.007 / 0.001 / 0.000, 4e-5; std 1: 1.0 / 0.42 / 0.11 / 0.028
    / 0.004, 3e-4; std 2: 1.96 / 1.85 / 1.44 / 1.10 / 0.61, 0.035. Only std 2 learns from
    the first epoch (MNIST, 2000 images, lr 1e-2: 25 % after epoch 1 against 10 %).
    Counts: uniform in [0.5, 1.5] (hard EM quickly overrides them with real counts).
    """
    if log_space:
        return rng.normal(0.0, 2.0, size=shape).astype(np.float32)
    return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
