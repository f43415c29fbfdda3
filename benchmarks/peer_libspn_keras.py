"""libspn-keras 0.6.0 (the paper's library) on the architectures of ``throughput.py``.

Runs inside ``benchmarks/.peer-venv`` (created by ``throughput.py --peer``; TensorFlow 2.21,
``tf-keras==2.21.0``, ``TF_USE_LEGACY_KERAS=1``), never in skspn's environment. Called as::

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=benchmarks .peer-venv/bin/python peer_libspn_keras.py '<json>'

with the same configuration JSON as a ``throughput.py`` worker (architecture, operation,
jit_compile, batch sizes, repeats). Prints one JSON line per batch size.

Mapping of the operations onto the library:

``forward``  ``model(x)`` with ``RootSum(return_weighted_child_logits=False)`` (log p(x)),
             gradient sum op, log-space accumulators.
``hard_em``  ``SumOpUnweightedHardEMBackprop`` (linear accumulators), loss ``-sum log p(x)``,
             gradients (= hard counts) applied with
             ``spnk.optimizers.OnlineExpectationMaximization``
             (falls back to adding the counts by hand if the optimizer does not run on
             tf-keras 2.21; the record then says so).
``adam``     classifier: ``LogDropout(0.2)`` after every product, ``RootSum`` returning the class
             logits, sparse categorical cross-entropy; inpainting nets: ``-mean log p(x)``.
             ``tf.keras.optimizers.Adam(1e-3)``. (libspn-keras 0.6.0 has no input-dropout
             layer that marginalises pixels; only product dropout is applied.)
``impute``   ``SequentialSumProductNetwork(..., infer_no_evidence=True)`` called on
             ``(x, evidence_mask)``: forward, backward to the leaves, posterior-weighted modes.

Architecture: the same product stack as ``skspn.core.plan_products`` for these inputs
(``n_nonoverlapping`` stride-2 'valid' products, then dilations 1, 2, 4, ... with 'full'
padding, the last one 'final'), ``Local2DSum`` after every product but the last,
``SpatialToRegions``, then ``DenseSum(n_classes)`` + ``RootSum`` or just ``RootSum``.
Both libraries then feed the same top cells to the root (8x8 / 32x32 / 64x64 full-scope
cells; the worker records libspn-keras' in ``top_cells``), so the networks are identical.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from throughput import MAX_STEP_SECONDS, make_batch, time_batches  # noqa: E402


def product_stack(arch):
    """(strides, dilations, padding) per product layer, as skspn's planner lays them out."""
    n_no = arch["n_nonoverlapping"]
    depth = arch["depth"]
    layers = [([2, 2], [1, 1], "valid")] * n_no
    n_ov = depth - n_no
    for i in range(n_ov):
        d = 2 ** i
        layers.append(([1, 1], [d, d], "final" if i == n_ov - 1 else "full"))
    return layers


def build_model(arch, op):
    import libspn_keras as spnk
    from tensorflow import keras

    em = op == "hard_em"
    if em:
        spnk.set_default_sum_op(spnk.SumOpUnweightedHardEMBackprop())
    else:
        spnk.set_default_sum_op(spnk.SumOpGradBackprop())
    acc_init = keras.initializers.RandomUniform(0.5, 1.5)  # log-transformed for log-space
    h, w = arch["shape"]
    # the evidence-mask model takes (x, mask): no fixed single input shape for it
    shape_kw = {} if op == "impute" else dict(input_shape=(h, w, 1))
    layers = [spnk.layers.NormalLeaf(
        num_components=arch["components"], **shape_kw,
        location_trainable=arch["leaf_trainable"] and not em,
        location_initializer=spnk.initializers.Equidistant(minval=-1.5, maxval=1.5))]
    dropout = op == "adam" and arch["n_classes"]
    sums = arch["sums"]
    stack = product_stack(arch)
    if isinstance(sums, int):
        sums = [sums] * (len(stack) - 1)
    for i, (strides, dilations, padding) in enumerate(stack):
        depthwise = not (i == 0 and arch["first_product"] == "one_hot")
        layers.append(spnk.layers.Conv2DProduct(
            strides=strides, dilations=dilations, kernel_size=[2, 2], padding=padding,
            depthwise=depthwise, num_channels=None))
        if dropout:
            layers.append(spnk.layers.LogDropout(rate=0.2))
        if i < len(stack) - 1:
            layers.append(spnk.layers.Local2DSum(num_sums=sums[i],
                                                 accumulator_initializer=acc_init))
    layers.append(spnk.layers.SpatialToRegions())
    if arch["n_classes"]:
        layers.append(spnk.layers.DenseSum(num_sums=arch["n_classes"],
                                           accumulator_initializer=acc_init))
    logits = op == "adam" and bool(arch["n_classes"])
    layers.append(spnk.layers.RootSum(return_weighted_child_logits=logits,
                                      accumulator_initializer=acc_init))
    model = spnk.models.SequentialSumProductNetwork(layers, infer_no_evidence=(op == "impute"))
    if op == "impute":
        # build with a dummy call (the evidence-mask model has no plain input shape)
        x = tf.zeros((1, h, w, 1))
        model((x, tf.ones((1, h, w, 1), tf.bool)))
    top = [layer for layer in model.layers if isinstance(layer, spnk.layers.Conv2DProduct)][-1]
    return model, top


def step_factory(arch, op, jit, notes):
    from tensorflow import keras

    model, top = build_model(arch, op)
    notes["top_cells"] = list(top.output_shape[1:3]) if hasattr(top, "output_shape") else None
    if op == "forward":
        fn = tf.function(lambda x: model(x, training=False), jit_compile=jit)
    elif op == "impute":
        fn = tf.function(lambda x, m: model((x, m), training=False), jit_compile=jit)
    elif op == "hard_em":
        import libspn_keras as spnk

        variables = model.trainable_variables
        manual = False
        try:
            opt = spnk.optimizers.OnlineExpectationMaximization(learning_rate=0.05)
        except Exception as exc:  # noqa: BLE001
            notes["optimizer_error"] = f"{type(exc).__name__}: {exc}"[:500]
            manual = True

        def em_step(x):
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                loss = -tf.reduce_sum(out)
            grads = tape.gradient(loss, variables)
            if manual:
                for v, g in zip(variables, grads):
                    v.assign_add(-g)  # the hard counts, as skspn's online EM does
            else:
                opt.apply_gradients(zip(grads, variables))
            return loss

        fn = tf.function(em_step, jit_compile=jit)
        notes["em_update"] = ("manual accumulator update" if manual
                              else "OnlineExpectationMaximization")
    elif op == "adam":
        variables = model.trainable_variables
        opt = keras.optimizers.Adam(1e-3)
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        def adam_step(x, y):
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                loss = ce(y, out) if arch["n_classes"] else -tf.reduce_mean(out)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            return loss

        fn = tf.function(adam_step, jit_compile=jit)
    else:
        raise ValueError(op)

    def make_step(batch):
        x, y = make_batch(arch, batch, op)
        if op == "impute":
            mask = tf.constant(~np.isnan(x))
            xc = tf.constant(np.nan_to_num(x))
            return lambda: fn(xc, mask).numpy()
        xc = tf.constant(x)
        if op == "adam":
            yc = tf.constant(y)
            return lambda: fn(xc, yc).numpy()
        return lambda: fn(xc).numpy()

    return make_step


def main():
    cfg = json.loads(sys.argv[1])
    import libspn_keras

    notes = dict(libspn_keras=libspn_keras.__version__, tf_version=tf.__version__,
                 devices=[d.device_type for d in tf.config.list_logical_devices()])
    try:
        make_step = step_factory(cfg["arch_spec"], cfg["op"], cfg["jit"], notes)
    except Exception as exc:  # noqa: BLE001
        print(json.dumps(dict(info=notes)))
        for b in cfg["batches"]:
            print(json.dumps(dict(batch=b, status="error",
                                  error=f"building the model: {type(exc).__name__}: {exc}"[:2000])))
        return
    print(json.dumps(dict(info=notes)))
    sys.stdout.flush()
    time_batches(make_step, cfg["batches"], cfg["repeats"], cfg.get("max_step_s", MAX_STEP_SECONDS))


if __name__ == "__main__":
    main()
