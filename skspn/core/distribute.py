"""Data-parallel training steps through ``tf.distribute``.

A training step is written once, as a function of one batch that returns *sums* (EM
counts, sums of per-sample losses, their gradients scaled by the global batch's weight
sum, sums of weights). Without a strategy it runs as is. Under ``MirroredStrategy``
(several devices of one machine) or ``MultiWorkerMirroredStrategy`` (several machines,
configured through ``TF_CONFIG``) every replica runs it on its shard of the global batch
and the sums are all-reduced; because the step returns sums, not means, the reduced
result is exactly the single-device result for the same global batch (up to float
rounding).

Every replica receives the whole global batch and slices its own rows, so the caller
feeds the same numpy batch everywhere (in multi-worker training every worker runs the same
program on the same data) and no ``tf.data`` pipeline is needed.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

#: Strategies whose replicas all hold the full model and all-reduce: what the steps need.
SUPPORTED_STRATEGIES = (tf.distribute.MirroredStrategy,
                        tf.distribute.MultiWorkerMirroredStrategy,
                        tf.distribute.OneDeviceStrategy)


#: What TensorFlow's error says when an all-reduce met one of another shape under the same
#: collective keys (see ``DataParallel.execute``); other aborts (a lost worker, a timeout)
#: keep their own errors.
_COLLECTIVE_COLLISION = "Shape mismatch in the collective instance"


def current_strategy():
    """The strategy of the surrounding ``with strategy.scope():`` block, or ``None``.

    Raises ``ValueError`` for strategies the training steps cannot run under, and when
    called from inside a replica function (``strategy.run``).
    """
    if not tf.distribute.has_strategy():
        return None
    if not tf.distribute.in_cross_replica_context():
        raise ValueError("skspn training cannot be started inside strategy.run; call it in "
                         "the strategy's scope (with strategy.scope(): ...)")
    strategy = tf.distribute.get_strategy()
    check_strategy(strategy)
    return strategy


def scope(strategy):
    """Context in which variables are created: mirrored under ``strategy``, plain without."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def check_strategy(strategy):
    if strategy is not None and not isinstance(strategy, SUPPORTED_STRATEGIES):
        # The public names (MultiWorkerMirroredStrategy's class is an internal one).
        names = "MirroredStrategy, MultiWorkerMirroredStrategy, OneDeviceStrategy"
        raise ValueError(f"unsupported tf.distribute strategy {type(strategy).__name__}; "
                         f"skspn trains under {names}")


def is_multi_worker(strategy):
    """Whether replicas live on other machines (``worker_devices`` lists this worker's)."""
    return (strategy is not None
            and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))


def _shard(x):
    """This replica's rows of the global batch ``x``: contiguous blocks of
    ``ceil(B / n_replicas)`` rows, the last ones shorter or empty (an empty shard's sums
    are 0, so any batch size works)."""
    ctx = tf.distribute.get_replica_context()
    n_replicas = ctx.num_replicas_in_sync
    replica = ctx.replica_id_in_sync_group
    per_replica = (tf.shape(x)[0] + n_replicas - 1) // n_replicas
    return x[replica * per_replica:(replica + 1) * per_replica]


class DataParallel:
    """Runs a per-batch step function on one device or on every replica of ``strategy``.

    Parameters
    ----------
    strategy : tf.distribute.Strategy or None
        ``None``: call the step directly (no overhead).
    """

    def __init__(self, strategy=None):
        check_strategy(strategy)
        self.strategy = strategy

    @property
    def n_replicas(self):
        return 1 if self.strategy is None else self.strategy.num_replicas_in_sync

    def __call__(self, step, batch, seed):
        """``step(*batch, seed)`` summed over replicas.

        Parameters
        ----------
        step : callable
            Takes the tensors of ``batch`` (leading axis = samples) and a seed ``[2]``;
            returns a nested structure of tensors that are sums over the samples.
        batch : tuple of Tensor
            The global batch.
        seed : Tensor ``[2]``
            The same on every replica: the random draws are keyed by each sample's index
            in the global batch (pass ``tf.range(B)`` in ``batch``, see ``keyed_random``),
            so sharding does not change them.
        """
        if self.strategy is None:
            return step(*batch, seed)

        def replica_step(*global_batch):
            sums = step(*[_shard(t) for t in global_batch], seed)
            # One batched all-reduce of the whole structure (counts of every layer, or
            # every gradient), across devices and workers.
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, sums)

        per_replica = self.strategy.run(replica_step, args=tuple(batch))
        # All replicas now hold the same totals: take this worker's first copy.
        return tf.nest.map_structure(
            lambda v: self.strategy.experimental_local_results(v)[0], per_replica)

    def execute(self, compiled, *args):
        """``compiled(*args)``: a step whose graph runs ``self(...)``.

        Under a strategy, an all-reduce that TensorFlow aborts because another strategy
        object ran differently shaped all-reduces in this process before raises a
        ``RuntimeError`` that says so, instead of TensorFlow's collective-ops error; any
        other error is raised as it is.
        """
        if self.strategy is None:
            return compiled(*args)
        try:
            return compiled(*args)
        except tf.errors.OpError as error:
            said = [line.strip() for line in str(error).splitlines()
                    if _COLLECTIVE_COLLISION in line]
            if not said:
                raise
            raise RuntimeError(
                f"TensorFlow aborted the all-reduce of a training step under "
                f"{type(self.strategy).__name__}: another tf.distribute strategy object over "
                "these devices has probably run all-reduces in this process before. "
                "TensorFlow numbers the all-reduces of every such strategy alike, so those of "
                "a second one collide with the first's when their shapes differ (TensorFlow "
                "issue #62790). Create one strategy and fit every model of the process in its "
                "scope; TensorFlow's collective ops stay aborted until the process restarts. "
                f"TensorFlow said: {said[0]}"
            ) from error

    def scope(self):
        """Context in which variables are created (mirrored under a strategy)."""
        return scope(self.strategy)

    def check_variables(self, variables):
        """Raise if ``variables`` were not created in the strategy's scope."""
        if self.strategy is None:
            return
        for v in variables:
            if not self.strategy.extended.variable_created_in_scope(v):
                raise ValueError(f"variable {v.name} was not created in the strategy's scope: "
                                 f"build the network inside `with strategy.scope():`")


def gather_across_replicas(strategy, values):
    """``values`` (a float64 vector) of every replica, as an array ``[n_replicas, len]``.

    Used before multi-worker training to check that every worker was given the same data
    and to agree on one random seed. Without a strategy: ``values[None]``.
    """
    values = np.asarray(values, np.float64)
    if strategy is None:
        return values[None]
    per_replica = strategy.run(lambda: tf.constant(values[None]))
    return strategy.gather(per_replica, axis=0).numpy()
