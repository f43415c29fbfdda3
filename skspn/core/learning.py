"""Compiled training steps and inference ops for a ``DGCSPN``.

- ``EMLearner``: online EM. One step = forward (marginal inference, as in the paper),
  backward through the routing sum op (``hard``, ``hard_unweighted`` or ``soft``), and
  the resulting counts added to each sum layer's accumulators. Leaves stay fixed.
- ``GradientLearner``: Adam on the generative objective ``-mean log p(x)`` or on the
  cross-entropy of ``p(y | x)``, with product and input dropout while training.
- ``CompiledOps``: the batched inference queries, traced once per network.

Both learners take an optional ``tf.distribute`` strategy (``distribute.DataParallel``):
their per-batch work returns sums (counts, summed losses, gradients of the summed loss
over the global batch's weight sum, summed weights), which are all-reduced over replicas
before the update, so a step on ``R`` replicas equals the single-device step on the same
global batch.

Adam is written out here (a few lines) rather than taken from Keras so that its state is
plain ``tf.Variable``s that can be exported to numpy and restored exactly.
"""

from __future__ import annotations

import collections
import functools
import threading
import weakref

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as _tf_ops  # the gradient registry, see below

from .distribute import DataParallel
from .network import DGCSPN
from .products import traced_for_xla

EM_ROUTINGS = {"hard_em": "hard", "hard_em_unweighted": "hard_unweighted", "soft_em": "soft"}

# XLA compilation: measured on the 2-core CPU (MNIST inpainting net, batch 128) the
# compiled hard-EM step and forward pass run at about the same speed with and without it,
# while compiling takes 2-4x longer, which dominates the many small fits of a test suite
# or a grid search. Off by default; benchmarks/throughput.py measures both.
JIT_COMPILE = False


def _image_spec(network):
    h, w = network.spatial_shape
    return tf.TensorSpec([None, h, w, network.n_colors], tf.float32)


_SEED = tf.TensorSpec([2], tf.int64)


class EMLearner:
    """EM on the sum weights of ``network`` (which must use count accumulators).

    Parameters
    ----------
    network : DGCSPN
    learning : {'hard_em_unweighted', 'hard_em', 'soft_em'}
    update : {'epoch', 'online'}
        ``'online'`` (the paper's online EM): each batch's counts are added to the
        accumulators at once, so later batches see the new weights and the accumulators
        keep growing. ``'epoch'``: counts are collected over a whole pass with the
        weights fixed and replace the accumulators at ``end_epoch()`` (batch EM: the
        counts of the first, poorly initialised passes are not kept forever; soft EM then
        never decreases the likelihood). A pass counts with the weights of its first step
        (normalised once); accumulators changed by hand within a pass take effect after
        ``end_epoch()``.
    strategy : tf.distribute.Strategy, optional
        Data-parallel training (see ``distribute``); the network must have been built in
        its scope. The counts of all replicas are summed before the update.
    """

    def __init__(self, network: DGCSPN, learning="hard_em_unweighted", update="online",
                 jit_compile=JIT_COMPILE, strategy=None):
        if network.top.log_space:
            raise ValueError("EM needs a network built with log_space=False (count accumulators)")
        if update not in ("epoch", "online"):
            raise ValueError(f"update must be 'epoch' or 'online', got {update!r}")
        if learning not in EM_ROUTINGS:
            raise ValueError(f"learning must be one of {sorted(EM_ROUTINGS)}, got {learning!r}")
        self.network = network
        self.routing = EM_ROUTINGS[learning]
        self.update = update
        self.parallel = _data_parallel(strategy, jit_compile, network)
        # The counts of a pass until its M-step ('epoch' only: online steps add to the
        # accumulators themselves).
        self.pending = []
        if update == "epoch":
            with self.parallel.scope():
                self.pending = [tf.Variable(tf.zeros_like(layer.accumulator), trainable=False)
                                for layer in network.weight_layers]
        spec = [_image_spec(network), tf.TensorSpec([None], tf.float32), _SEED]
        if update == "epoch":
            # The weights stay fixed for a whole pass: they are normalised once per epoch,
            # not in every step (see NormalisedWeights).
            spec.append(network.weight_specs())
            self._normalised_weights = _compiled(network.normalised_weights, [], jit_compile,
                                                 network)
        self._epoch_weights = None
        self._step = _compiled(self._step_impl, spec, jit_compile, network)

    def _batch_counts(self, x, weight, sample_index, seed, weights=None):
        """Counts, ``sum weight * log p(x)`` and ``sum weight`` of one (shard of a) batch."""
        counts, root = self.network.em_counts(x, self.routing, seed, weight, sample_index,
                                              weights)
        return counts, tf.reduce_sum(weight * root), tf.reduce_sum(weight)

    def _step_impl(self, x, weight, seed, weights=None):
        batch = (x, weight, tf.range(tf.shape(x)[0]))
        counts, ll_sum, weight_sum = self.parallel(
            functools.partial(self._batch_counts, weights=weights), batch, seed)
        targets = self.pending if self.update == "epoch" else [
            layer.accumulator for layer in self.network.weight_layers]
        for target, c in zip(targets, counts):
            target.assign_add(c)
        return ll_sum / weight_sum

    def step(self, x, weight, seed):
        """One EM step on batch ``x`` with per-sample ``weight`` (0 = padding row);
        returns the batch's weighted mean ``log p(x)`` (with the weights before the update)."""
        if self.update != "epoch":
            return float(self.parallel.execute(self._step, x, weight, seed))
        if self._epoch_weights is None:  # the first step of a pass
            self._epoch_weights = self._normalised_weights()
        try:
            return float(self.parallel.execute(self._step, x, weight, seed,
                                               self._epoch_weights))
        except BaseException:  # an interrupted pass: the next step starts from the variables
            self._epoch_weights = None
            raise

    def end_epoch(self):
        """M-step of ``update='epoch'``: the pass's counts become the accumulators."""
        if self.update != "epoch":
            return
        for layer, pending in zip(self.network.weight_layers, self.pending):
            layer.accumulator.assign(pending)
            pending.assign(tf.zeros_like(pending))
        self._epoch_weights = None


class Adam(tf.Module):
    """Adam (Kingma & Ba) over a fixed list of variables."""

    def __init__(self, variables, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(name="adam")
        self.vars = list(variables)
        self.learning_rate = tf.Variable(float(learning_rate), trainable=False)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.vars]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.vars]

    def apply(self, grads):
        self.iterations.assign_add(1)
        t = tf.cast(self.iterations, tf.float32)
        beta_1_power, beta_2_power = self.beta_1 ** t, self.beta_2 ** t
        # One fused kernel per variable (the same update) instead of a dozen passes over
        # it: 13.8 -> 6.1 ms for the MNIST classifier's 5M parameters (CPU); with
        # SpatialSum.normalised, Adam steps of the MNIST inpainting net 9-13 % faster
        # (benchmarks/README.md). A strategy's mirrored variables take the formula, whose
        # assignments update every copy (the kernel would update one: the handle of a
        # mirrored variable is one replica's), in the strategy's scope or not.
        lr = self.learning_rate * tf.sqrt(1.0 - beta_2_power) / (1.0 - beta_1_power)
        for var, g, m, v in zip(self.vars, grads, self.m, self.v):
            if g is None:
                continue
            if not isinstance(var, tf.distribute.DistributedValues):
                tf.raw_ops.ResourceApplyAdam(
                    var=var.handle, m=m.handle, v=v.handle, beta1_power=beta_1_power,
                    beta2_power=beta_2_power, lr=self.learning_rate, beta1=self.beta_1,
                    beta2=self.beta_2, epsilon=self.epsilon, grad=g)
                continue
            m.assign(self.beta_1 * m + (1.0 - self.beta_1) * g)
            v.assign(self.beta_2 * v + (1.0 - self.beta_2) * tf.square(g))
            var.assign_sub(lr * m / (tf.sqrt(v) + self.epsilon))

    def get_state(self):
        return [int(self.iterations.numpy())] + [a.numpy() for a in self.m + self.v]

    def set_state(self, state):
        self.iterations.assign(state[0])
        for var, value in zip(self.m + self.v, state[1:]):
            var.assign(value)


class GradientLearner:
    """Adam on ``-mean log p(x)`` (``objective='nll'``) or the class cross-entropy (``'ce'``).

    Trains every trainable variable of the network: log-space accumulators and, when the
    leaf was built trainable, its parameters. With a ``strategy`` each replica differentiates
    its shard's summed loss divided by the global batch's weight sum, and the losses and
    gradients of all replicas are all-reduced.
    """

    def __init__(self, network: DGCSPN, objective="nll", learning_rate=1e-3,
                 product_dropout=0.0, input_dropout=0.0, jit_compile=JIT_COMPILE,
                 strategy=None):
        if objective not in ("nll", "ce"):
            raise ValueError(f"objective must be 'nll' or 'ce', got {objective!r}")
        if objective == "ce" and not network.n_classes:
            raise ValueError("cross-entropy needs a network with class sums")
        if not network.top.log_space:
            raise ValueError("gradient learning needs a network built with log_space=True "
                             "(log-space accumulators)")
        for name, rate in (("product_dropout", product_dropout),
                           ("input_dropout", input_dropout)):
            if not 0.0 <= float(rate) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate!r}")
        if not float(learning_rate) > 0.0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
        self.network = network
        self.objective = objective
        self.product_dropout = float(product_dropout)
        self.input_dropout = float(input_dropout)
        self.jit_compile = bool(jit_compile)
        self.variables = [v for v in network.trainable_variables]
        self.parallel = _data_parallel(strategy, jit_compile, network)
        with self.parallel.scope():
            self.optimizer = Adam(self.variables, learning_rate)
        spec = [_image_spec(network), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.float32), _SEED]
        # Under step-level XLA the dropout masks are made by a compiled function of their
        # own and passed in (see DGCSPN.dropout_masks); XLA is never used with a strategy.
        self._mask_plan = (network.dropout_plan(self.product_dropout, self.input_dropout)
                           if jit_compile else [])
        if self._mask_plan:
            spec.append([tf.TensorSpec(shape, tf.bool) for _, shape, _ in self._mask_plan])
            self._masks = _compiled(
                lambda seed, sample_index: network.dropout_masks(
                    seed, sample_index, self.product_dropout, self.input_dropout),
                [_SEED, tf.TensorSpec([None], tf.int32)], jit_compile, network)
        self._step = _compiled(self._step_impl, spec, jit_compile, network)

    def _summed_loss(self, x, y, weight, sample_index, seed, keep_masks=None):
        net = self.network
        top, root = net.forward(x, "gradient", seed, self.product_dropout, self.input_dropout,
                                sample_index, keep_masks)
        if self.objective == "nll":
            per_sample = -root
        else:
            joint = net.joint_from_top(top)
            log_post = tf.nn.log_softmax(joint, axis=-1)
            per_sample = -tf.gather(log_post, y, axis=1, batch_dims=1)
        return tf.reduce_sum(weight * per_sample)

    def _batch_gradients(self, x, y, weight, sample_index, seed, keep_masks=None, scale=1.0):
        """Gradients of ``scale`` times the summed loss of one shard, and that summed loss.

        Variables the loss does not reach get no gradient (``None``), as without a strategy:
        they are left out here and skipped by Adam.
        """
        with tf.GradientTape() as tape:
            loss_sum = self._summed_loss(x, y, weight, sample_index, seed, keep_masks)
            scaled = loss_sum * scale
        grads = tape.gradient(scaled, self.variables)
        reached = {i: g for i, g in enumerate(grads) if g is not None}
        return reached, loss_sum

    def _step_impl(self, x, y, weight, seed, keep_masks=None):
        batch = (x, y, weight, tf.range(tf.shape(x)[0]))
        # The gradient of the mean loss: the loss is divided by the global batch's weight
        # sum before differentiating (the sum over replicas of each shard's share), which
        # scales one number per sample instead of every gradient afterwards (a pass over
        # each variable). A batch of zero total weight has zero gradients (not 0 / 0).
        weight_sum = tf.maximum(tf.reduce_sum(weight), 1e-30)
        reached, loss_sum = self.parallel(
            functools.partial(self._batch_gradients, keep_masks=keep_masks,
                              scale=1.0 / weight_sum), batch, seed)
        self.optimizer.apply([reached.get(i) for i in range(len(self.variables))])
        return loss_sum / weight_sum

    def step(self, x, weight, seed, y=None):
        """One Adam step; ``y`` (int class indices) is needed for ``objective='ce'``."""
        if y is None:
            if self.objective == "ce":
                raise ValueError("objective='ce' needs the class indices y")
            y = np.zeros(len(x), np.int32)
        if self._mask_plan:
            seed = tf.constant(seed, tf.int64)
            masks = self._masks(seed, tf.range(len(x), dtype=tf.int32))
            return float(self.parallel.execute(self._step, x, y, weight, seed, masks))
        return float(self.parallel.execute(self._step, x, y, weight, seed))


def _compiled(fn, input_signature, jit_compile, network):
    """``tf.function`` without AutoGraph of ``fn``, a query or step on ``network``: the
    network's control flow is plain Python over layers, so conversion only added tracing
    time (about a third of a small network's fit, where tracing dominates).

    ``fn`` goes in as a ``functools.partial``: TensorFlow's frequent-retracing warning
    counts traces per Python code object, so every network's first trace of the same
    method (several networks in one process: an ensemble, a grid search) counted as one
    function retracing and printed a spurious warning. A partial has no code object and
    gets a count of its own; a function that really retraces still warns.

    Each trace's gradient registrations are released after ``network`` (see
    ``_tracing_for``).
    """
    traced = functools.partial(_tracing_for, network, fn)
    if jit_compile:
        return tf.function(functools.partial(_trace_for_xla, traced),
                           input_signature=input_signature, jit_compile=True, autograph=False)
    return tf.function(traced, input_signature=input_signature, jit_compile=False,
                       autograph=False)


def _trace_for_xla(fn, *args):
    with traced_for_xla():
        return fn(*args)


# Every tf.custom_gradient traced in a graph registers its gradient function in
# TensorFlow's global registry under a new name ("CustomGradient-<uid>") and never removes
# it; the entry holds the traced graph. Each network traces its own functions, so every
# fit, grid-search candidate or unpickled model kept 3-10 MiB for the life of the process
# (80 small fits: +600 MiB). The names registered while tracing a network's functions are
# removed after the network is garbage-collected, and with it the functions that traced
# them (a concrete function taken out of them by hand would lose its gradients). Without
# the (private) registry, as in a future TensorFlow, this does nothing.
#
# Threads: the names are told apart by comparing the registry before and after a trace,
# so traces hold _TRACING (serialising them; tracing is Python under the GIL anyway) and
# no other thread's registration is booked to this network. A finalizer runs wherever the
# garbage collector does, possibly inside another thread's trace: it must neither block
# nor change the registry then, so it only queues the names, and the next trace removes
# them under the lock.
_TRACING = threading.RLock()
_REGISTERED_BY = weakref.WeakKeyDictionary()  # network -> names of its registrations
_RELEASED = collections.deque()  # names of collected networks, to be removed


def _gradient_registry():
    registry = getattr(getattr(_tf_ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def _release_collected(registry=None):
    """Remove the registrations of the networks collected so far (done by every trace)."""
    registry = _gradient_registry() if registry is None else registry
    if registry is None:
        return
    with _TRACING:
        while _RELEASED:
            registry.pop(_RELEASED.popleft(), None)  # a nested trace may list one twice


def _tracing_for(network, fn, *args):
    """``fn(*args)``, remembering the gradient functions it registers for ``network``."""
    registry = _gradient_registry()
    if registry is None or tf.executing_eagerly():  # eager custom gradients register none
        return fn(*args)
    with _TRACING:
        _release_collected(registry)
        before = set(registry)  # one C-level pass: no finalizer or thread runs within
        try:
            return fn(*args)
        finally:
            added = [name for name in set(registry) - before
                     if name.startswith("CustomGradient-")]
            if added:
                names = _REGISTERED_BY.get(network)
                if names is None:
                    names = _REGISTERED_BY[network] = []
                    # Holds the list, not the network.
                    weakref.finalize(network, _RELEASED.extend, names)
                names.extend(added)


def _data_parallel(strategy, jit_compile, network):
    parallel = DataParallel(strategy)
    if strategy is not None and jit_compile:
        raise ValueError("jit_compile is not supported with a tf.distribute strategy")
    parallel.check_variables(network.variables)
    return parallel


class CompiledOps:
    """Batched inference queries on ``network``, each a ``tf.function`` traced once.

    Every query takes the network's ``NormalisedWeights``: pass those of
    ``normalised_weights()`` to all batches of one query (they cost about as much as a
    forward pass of a small batch), or None to form them for this batch.
    """

    def __init__(self, network: DGCSPN, jit_compile=JIT_COMPILE):
        self.network = network
        img, weights = _image_spec(network), network.weight_specs()
        self._normalised_weights = _compiled(network.normalised_weights, [], jit_compile,
                                             network)
        # values only: no query differentiates them (product_sum's forward_only)
        self._log_likelihood = _compiled(
            functools.partial(network.log_likelihood, forward_only=True), [img, weights],
            jit_compile, network)
        if network.n_classes:
            self._joint_log_likelihood = _compiled(
                functools.partial(network.joint_log_likelihood, forward_only=True),
                [img, weights], jit_compile, network)
        index = tf.TensorSpec([None], tf.int32)
        self._complete = {
            m: _compiled(lambda x, seed, sample_index, weights, m=m: network.complete(
                x, m, seed, sample_index, weights), [img, _SEED, index, weights],
                jit_compile, network)
            for m in ("marginal", "mpe", "sample")}
        if network.leaf.discrete:
            self._predictive = _compiled(network.predictive, [img, weights], jit_compile,
                                         network)

    def normalised_weights(self):
        """The network's current ``NormalisedWeights`` (one compiled pass)."""
        return self._normalised_weights()

    def _weights(self, weights):
        return self.normalised_weights() if weights is None else weights

    def log_likelihood(self, x, weights=None):
        """``network.log_likelihood`` of batch ``x``."""
        return self._log_likelihood(x, self._weights(weights))

    def joint_log_likelihood(self, x, weights=None):
        """``network.joint_log_likelihood`` of batch ``x`` (classifier networks)."""
        if not hasattr(self, "_joint_log_likelihood"):
            raise ValueError("joint_log_likelihood needs a network with class sums")
        return self._joint_log_likelihood(x, self._weights(weights))

    def predictive(self, x, weights=None):
        """``network.predictive`` of batch ``x`` (discrete leaves)."""
        if not hasattr(self, "_predictive"):
            raise ValueError("predictive needs a network with discrete (Bernoulli or "
                             "Categorical) leaves")
        return self._predictive(x, self._weights(weights))

    def complete(self, x, method="marginal", seed=None, first_index=0, weights=None):
        """``network.complete`` on batch ``x`` whose rows are samples ``first_index, ...``
        of a larger input (keys the random draws; see ``DGCSPN.complete``)."""
        if method not in self._complete:
            raise ValueError(f"method must be one of {sorted(self._complete)}, got {method!r}")
        if seed is None:
            seed = np.zeros(2, np.int64)
        index = np.arange(first_index, first_index + len(x), dtype=np.int32)
        return self._complete[method](x, tf.constant(seed, tf.int64), index,
                                      self._weights(weights))
