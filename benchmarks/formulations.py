"""Where the time of a DGC-SPN step goes, and alternative formulations of its layers.

Standalone (does not change skspn): times, on the tensor shapes of a real network,

1. ``--breakdown``: every layer of the MNIST inpainting net (batch 64) separately, forward
   and forward+backward (``gradient`` routing, and ``hard_unweighted`` for the sums), using
   the core's own ``Product`` / ``SpatialSum`` objects;
2. ``--sums``: the spatial sum, current ``log_matmul_exp`` (max-subtract, exp, batched
   matmul, log) against alternatives;
3. ``--routing``: the backward of the hard-unweighted routing sum (random tie-breaking
   argmax) against cheaper tie-breaking;
4. ``--products``: the depthwise and one-hot products, strided slices (current) against
   one-hot ``conv2d`` (libspn-keras' formulation) and other forms; the stride-2 product as
   strided slices against unit-stride slices of 2x2 blocks (current).

Each timing is the minimum (and median) over repeated calls of a ``tf.function`` after two
warm-up calls; the minimum is the least disturbed by other processes on a shared machine.
Writes ``benchmarks/results/throughput_formulations.json``.

    python benchmarks/formulations.py            # everything (~3-5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from skspn.core import keyed_random  # noqa: E402
from skspn.core.sums import log_matmul_exp, routed_sum  # noqa: E402
from throughput import ARCHS, build_skspn  # noqa: E402

SEED = tf.constant([1, 2], tf.int64)


def bench(fn, *args, n=7):
    """(min, median) seconds of ``fn(*args)`` (results forced to host)."""
    def run():
        out = fn(*args)
        for o in tf.nest.flatten(out):
            o.numpy()
    run()
    run()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    return float(min(ts)), float(np.median(ts))


def fmt(t):
    return f"{t[0] * 1e3:8.2f} ms (median {t[1] * 1e3:8.2f})"


# ----------------------------------------------------------------------------- 1. breakdown
def breakdown(arch_name="mnist_inpainting", batch=64, out=None, log=print):
    arch = ARCHS[arch_name]
    net = build_skspn(arch, log_space=False)
    rng = np.random.default_rng(0)
    h, w = arch["shape"]
    x = tf.constant(rng.standard_normal((batch, h, w, 1)).astype(np.float32))
    keys = keyed_random.sample_keys(SEED, tf.range(batch))  # the sums' per-sample keys
    rows = []
    leaf_fn = tf.function(lambda x: net.leaf_log_prob(x))
    t = bench(leaf_fn, x)
    rows.append(dict(layer="leaf", shape=None, fwd=t))
    log(f"  leaf                         fwd {fmt(t)}")
    cur = leaf_fn(x)
    log_w = net.log_weights()
    total_fwd = total_bwd = total_em = t[0]
    for i, product in enumerate(net.products):
        inp = tf.constant(cur.numpy())
        f = tf.function(lambda a, p=product: p(a))

        def fb(a, g, p=product):
            # a data-dependent incoming gradient: with ones_like the backward of a slice sum
            # would be constant-folded away by grappler
            with tf.GradientTape() as tape:
                tape.watch(a)
                o = p(a)
            return tape.gradient(o, a, output_gradients=g)
        tf_ = bench(f, inp)
        cur = f(inp)
        g = tf.constant(rng.random(cur.shape.as_list()).astype(np.float32))
        tb = bench(tf.function(fb), inp, g)
        rows.append(dict(layer=product.name, mode=product.mode, in_shape=inp.shape.as_list(),
                         out_shape=cur.shape.as_list(), fwd=tf_, fwd_bwd=tb))
        log(f"  {product.name:10s} {product.mode:9s} {str(inp.shape.as_list()):22s} -> "
            f"{str(cur.shape.as_list()):22s} fwd {fmt(tf_)}  fwd+bwd {fmt(tb)}")
        total_fwd += tf_[0]
        total_bwd += tb[0]
        total_em += tb[0]
        if i < len(net.sums):
            s = net.sums[i]
            inp = tf.constant(cur.numpy())
            lw = log_w[i]
            f = tf.function(lambda a, lw, s=s: s(a, lw, "gradient", keys))

            def fbr(a, lw, g, s=s, routing="gradient"):
                with tf.GradientTape() as tape:
                    tape.watch([a, lw])
                    o = s(a, lw, routing, keys)
                return tape.gradient(o, [a, lw], output_gradients=g)
            tf_ = bench(f, inp, lw)
            cur = f(inp, lw)
            g = tf.constant(rng.random(cur.shape.as_list()).astype(np.float32))
            tg = bench(tf.function(fbr), inp, lw, g)
            th = bench(tf.function(lambda a, lw, g: fbr(a, lw, g, routing="hard_unweighted")),
                       inp, lw, g)
            rows.append(dict(layer=s.name, in_shape=inp.shape.as_list(),
                             out_shape=cur.shape.as_list(),
                             fwd=tf_, fwd_bwd_gradient=tg, fwd_bwd_hard_unweighted=th))
            log(f"  {s.name:10s} {'sum':9s} {str(inp.shape.as_list()):22s} -> "
                f"{str(cur.shape.as_list()):22s} fwd {fmt(tf_)}  fwd+bwd grad {fmt(tg)}  "
                f"fwd+bwd hard_unweighted {fmt(th)}")
            total_fwd += tf_[0]
            total_bwd += tg[0]
            total_em += th[0]
    log(f"  sum of layer minima: forward {total_fwd * 1e3:.1f} ms, forward+backward "
        f"(gradient) {total_bwd * 1e3:.1f} ms, (hard_unweighted sums) {total_em * 1e3:.1f} ms")
    # the whole compiled ops, for reference
    from skspn.core.learning import CompiledOps, EMLearner
    ops = CompiledOps(net)
    em = EMLearner(net, "hard_em_unweighted")
    wt = np.ones(batch, np.float32)
    whole = dict(forward=bench(ops.log_likelihood, x),
                 hard_em_step=bench(tf.function(lambda x: em._step(x, tf.constant(wt), SEED)), x))
    log(f"  whole forward {fmt(whole['forward'])}; whole hard-EM step {fmt(whole['hard_em_step'])}")
    if out is not None:
        out["breakdown"] = dict(arch=arch_name, batch=batch, layers=rows, whole=whole)


# ----------------------------------------------------------------------------- 2. sums
def sum_current(x, log_w):
    return log_matmul_exp(x, log_w)


def sum_logsumexp_broadcast(x, log_w):
    # materialises [N, B, C_in, C_out]
    return tf.reduce_logsumexp(x[:, :, :, None] + log_w[:, None, :, :], axis=2)


def sum_einsum(x, log_w):
    m = tf.stop_gradient(tf.reduce_max(x, axis=-1, keepdims=True))
    return tf.math.log(tf.einsum("nbi,nio->nbo", tf.exp(x - m), tf.exp(log_w))) + m


def sum_batch_major(x, log_w):
    # the same product with the batch as the matmul's batch axis: [B, N, C] layout, per-cell
    # weights applied by a broadcast multiply-reduce (no materialised [.., C_in, C_out] when
    # C_in is small?) -- included to show what layout costs
    xb = tf.transpose(x, [1, 0, 2])
    m = tf.stop_gradient(tf.reduce_max(xb, axis=-1, keepdims=True))
    p = tf.exp(xb - m)
    s = tf.einsum("bni,nio->bno", p, tf.exp(log_w))
    return tf.transpose(tf.math.log(s) + m, [1, 0, 2])


def sum_no_max_guard(x, log_w):
    # current minus the is_finite guard on the max (x is always finite in skspn: LOG_ZERO)
    m = tf.stop_gradient(tf.reduce_max(x, axis=-1, keepdims=True))
    return tf.math.log(tf.matmul(tf.exp(x - m), tf.exp(log_w))) + m


SUM_VARIANTS = dict(current_log_matmul_exp=sum_current, no_isfinite_guard=sum_no_max_guard,
                    einsum=sum_einsum, batch_major_einsum=sum_batch_major,
                    logsumexp_broadcast=sum_logsumexp_broadcast)


def sums(out=None, log=print, jit_options=(False, True)):
    rng = np.random.default_rng(0)
    shapes = [  # (N cells, batch, C_in, C_out, where)
        (29 * 29, 64, 256, 16, "mnist inpainting sum_0"),
        (59 * 59, 64, 16, 16, "mnist inpainting sum_4"),
        (14 * 14, 64, 32, 64, "classifier sum_0"),
        (14 * 14, 64, 128, 128, "classifier sum_4"),
    ]
    res = []
    for n, b, ci, co, where in shapes:
        x = tf.constant(rng.standard_normal((n, b, ci)).astype(np.float32) * 3 - 10)
        lw = tf.constant(np.log(rng.dirichlet(np.ones(ci), size=(n, co)).transpose(0, 2, 1))
                         .astype(np.float32))
        ref = sum_current(x, lw).numpy()
        log(f"  {where}: [N={n}, B={b}, C_in={ci}] -> C_out={co}")
        for name, fn in SUM_VARIANTS.items():
            if name == "logsumexp_broadcast" and n * b * ci * co * 4 > 2e9:
                continue
            for jit in jit_options:
                f = tf.function(fn, jit_compile=jit)

                def fb(x, lw, fn=fn):
                    with tf.GradientTape() as tape:
                        tape.watch([x, lw])
                        o = fn(x, lw)
                    return tape.gradient(o, [x, lw])
                err = float(np.max(np.abs(f(x, lw).numpy() - ref)))
                tf_ = bench(f, x, lw)
                tb = bench(tf.function(fb, jit_compile=jit), x, lw)
                res.append(dict(where=where, shape=[n, b, ci, co], variant=name, jit=jit,
                                fwd=tf_, fwd_bwd=tb, max_abs_err=err))
                log(f"    {name:24s} jit={int(jit)} fwd {fmt(tf_)}  "
                    f"fwd+bwd {fmt(tb)}  err {err:.1e}")
    if out is not None:
        out["sums"] = res


# ----------------------------------------------------------------------------- 3. routing
def _route_current(x, g, seed):
    from skspn.core import keyed_random
    from skspn.core.sums import route
    keys = keyed_random.sample_keys(seed, tf.range(tf.shape(x)[1]))
    return route(x, None, g, keys, "hard_unweighted")


def _route_first_max(x, g, seed):
    # deterministic: first maximal child (no random tie-break)
    sel = tf.argmax(x, axis=2, output_type=tf.int32)
    onehot = tf.one_hot(sel, tf.shape(x)[-1], dtype=x.dtype)
    dx = onehot * tf.reduce_sum(g, axis=-1, keepdims=True)
    return dx, tf.matmul(onehot, g, transpose_a=True)


def _route_gumbel_tiny(x, g, seed):
    # random tie-break by adding noise far below float resolution of real differences:
    # one uniform draw, no compare/where pass
    u = tf.random.stateless_uniform(tf.shape(x), seed)
    sel = tf.argmax(x + 1e-6 * u * (tf.abs(x) + 1.0), axis=2, output_type=tf.int32)
    onehot = tf.one_hot(sel, tf.shape(x)[-1], dtype=x.dtype)
    dx = onehot * tf.reduce_sum(g, axis=-1, keepdims=True)
    return dx, tf.matmul(onehot, g, transpose_a=True)


def _route_ties_only(x, g, seed):
    # draw random numbers only for the [N, B] rows (one per row, scaled to C_in): pick the
    # k-th maximal child where k is uniform over the number of ties
    is_max = x >= tf.reduce_max(x, axis=2, keepdims=True)
    n_ties = tf.reduce_sum(tf.cast(is_max, tf.int32), axis=2)  # [N, B]
    u = tf.random.stateless_uniform(tf.shape(n_ties), seed)
    k = tf.cast(tf.floor(u * tf.cast(n_ties, tf.float32)), tf.int32)  # 0..n_ties-1
    rank = tf.cumsum(tf.cast(is_max, tf.int32), axis=2) - 1
    onehot = tf.cast(is_max & tf.equal(rank, k[..., None]), x.dtype)
    dx = onehot * tf.reduce_sum(g, axis=-1, keepdims=True)
    return dx, tf.matmul(onehot, g, transpose_a=True)


ROUTE_VARIANTS = dict(current_random_argmax=_route_current, first_max=_route_first_max,
                      tiny_noise_argmax=_route_gumbel_tiny, ties_only_random=_route_ties_only)


def routing(out=None, log=print):
    rng = np.random.default_rng(0)
    res = []
    for n, b, ci, co, where in [(29 * 29, 64, 256, 16, "mnist inpainting sum_0"),
                                (59 * 59, 64, 16, 16, "mnist inpainting sum_4")]:
        x = tf.constant(rng.standard_normal((n, b, ci)).astype(np.float32))
        g = tf.constant(rng.random((n, b, co)).astype(np.float32))
        log(f"  {where}: hard_unweighted backward, [N={n}, B={b}, C_in={ci}], C_out={co}")
        for name, fn in ROUTE_VARIANTS.items():
            for jit in (False, True):
                f = tf.function(lambda x, g, fn=fn: fn(x, g, SEED), jit_compile=jit)
                t = bench(f, x, g)
                res.append(dict(where=where, variant=name, jit=jit, time=t))
                log(f"    {name:24s} jit={int(jit)} {fmt(t)}")
        # the forward it pairs with, for scale
        lw = tf.constant(np.log(np.full((n, ci, co), 1.0 / ci, np.float32)))
        t = bench(tf.function(lambda x, lw: routed_sum(x, lw, "gradient")), x, lw)
        log(f"    (forward log_matmul_exp for scale: {fmt(t)})")
        res.append(dict(where=where, variant="forward_for_scale", jit=False, time=t))
    if out is not None:
        out["routing"] = res


# ----------------------------------------------------------------------------- 4. products
def _depthwise_slices(x, d, pad):
    # current formulation, cells-major [H, W, B, C], kernel 2x2, stride 1, dilation d
    x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0], [0, 0]])
    h, w = x.shape[0] - d, x.shape[1] - d
    return tf.add_n([x[a * d:a * d + h, c * d:c * d + w] for a in (0, 1) for c in (0, 1)])


def _depthwise_two_pass(x, d, pad):
    # separable: add the two rows first, then the two columns (2 adds instead of 3, and
    # the intermediate is smaller than the 4 full-size children)
    x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0], [0, 0]])
    h, w = x.shape[0] - d, x.shape[1] - d
    rows = x[:h] + x[d:d + h]
    return rows[:, :w] + rows[:, d:d + w]


def _depthwise_slices_custom_grad(x, d, pad):
    """Proposed: the same forward, with the backward written as a forward-style slice sum.

    The product is a sum of shifted slices of the padded input; its transpose is a sum of
    (oppositely) shifted slices of the zero-padded incoming gradient. TensorFlow's own
    gradient uses one ``StridedSliceGrad`` per child (a zero-filled padded-size tensor
    each, on a slow generic CPU kernel), then ``AddN`` and a ``Pad`` gradient.
    """
    h_in, w_in = x.shape[0], x.shape[1]

    @tf.custom_gradient
    def op(x):
        y = _depthwise_slices(x, d, pad)

        def grad(g):
            # dx[i] = sum_a g[i + pad - a d]  (valid indices only)  =  sum_a G[i + 2d - a d]
            big = pad  # (k - 1) d with k = 2
            gp = tf.pad(g, [[big, big], [big, big], [0, 0], [0, 0]])
            terms = []
            for a in (0, 1):
                for c in (0, 1):
                    r0 = big + pad - a * d
                    c0 = big + pad - c * d
                    terms.append(gp[r0:r0 + h_in, c0:c0 + w_in])
            return tf.add_n(terms)
        return y, grad
    return op(x)


def _depthwise_conv(x, d, pad):
    # libspn-keras: channels to the batch axis, conv2d with a 2x2 ones kernel, dilation d
    hh, ww, b, c = x.shape
    xb = tf.reshape(tf.transpose(x, [2, 3, 0, 1]), [b * c, hh, ww, 1])
    xb = tf.pad(xb, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    y = tf.nn.conv2d(xb, tf.ones([2, 2, 1, 1]), strides=1, padding="VALID", dilations=d)
    return tf.transpose(tf.reshape(y, [b, c, y.shape[1], y.shape[2]]), [2, 3, 0, 1])


def _stride2_slices(x):
    """2x2 stride-2 depthwise product (the classifier's first layers) as strided slices."""
    return tf.add_n([x[a::2, b::2] for a in (0, 1) for b in (0, 1)])


def _stride2_blocks(x):
    """The same as unit-stride slices of the input viewed as 2x2 blocks (current)."""
    h, w = x.shape[0] // 2, x.shape[1] // 2
    blocks = tf.reshape(x, tf.concat([[h, 2, w, 2], tf.shape(x)[2:]], 0))
    return tf.add_n([blocks[:, a, :, b] for a in (0, 1) for b in (0, 1)])


def _onehot_broadcast(x):
    # current one-hot (all combinations) product, kernel 2x2, d=1, full padding
    x = tf.pad(x, [[1, 1], [1, 1], [0, 0], [0, 0]])
    h, w = x.shape[0] - 1, x.shape[1] - 1
    ch = [x[a:a + h, c:c + w] for a in (0, 1) for c in (0, 1)]
    k = x.shape[-1]
    out = (tf.reshape(ch[0], [h, w, -1, k, 1, 1, 1]) + tf.reshape(ch[1], [h, w, -1, 1, k, 1, 1])
           + tf.reshape(ch[2], [h, w, -1, 1, 1, k, 1]) + tf.reshape(ch[3], [h, w, -1, 1, 1, 1, k]))
    return tf.reshape(out, [h, w, -1, k ** 4])


def _onehot_pairwise(x):
    # the same, combining two children at a time (k^2 then k^4): fewer broadcast adds
    x = tf.pad(x, [[1, 1], [1, 1], [0, 0], [0, 0]])
    h, w = x.shape[0] - 1, x.shape[1] - 1
    ch = [x[a:a + h, c:c + w] for a in (0, 1) for c in (0, 1)]
    k = x.shape[-1]
    top = tf.reshape(tf.reshape(ch[0], [h, w, -1, k, 1]) + tf.reshape(ch[1], [h, w, -1, 1, k]),
                     [h, w, -1, k * k])
    bot = tf.reshape(tf.reshape(ch[2], [h, w, -1, k, 1]) + tf.reshape(ch[3], [h, w, -1, 1, k]),
                     [h, w, -1, k * k])
    return tf.reshape(tf.reshape(top, [h, w, -1, k * k, 1]) + tf.reshape(bot, [h, w, -1, 1, k * k]),
                      [h, w, -1, k ** 4])


def _onehot_conv(x):
    # libspn-keras: conv2d with a [2, 2, K, K^4] one-hot kernel (batch-major layout)
    k = x.shape[-1]
    codes = np.arange(k ** 4)
    kern = np.zeros((2, 2, k, k ** 4), np.float32)
    for pos, (a, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        digit = (codes // k ** (3 - pos)) % k
        kern[a, c, digit, codes] = 1.0
    xb = tf.transpose(x, [2, 0, 1, 3])
    xb = tf.pad(xb, [[0, 0], [1, 1], [1, 1], [0, 0]])
    y = tf.nn.conv2d(xb, tf.constant(kern), strides=1, padding="VALID")
    return tf.transpose(y, [1, 2, 0, 3])


def products(out=None, log=print):
    rng = np.random.default_rng(0)
    res = []
    refs = [None]  # reference forward whose autodiff gradient checks each variant

    def run(name, fn, x, ref=None):
        for jit in (False, True):
            f = tf.function(fn, jit_compile=jit)

            def fb(a, g, fn=fn):
                with tf.GradientTape() as tape:
                    tape.watch(a)
                    o = fn(a)
                return tape.gradient(o, a, output_gradients=g)
            try:
                y = f(x).numpy()
                err = float(np.max(np.abs(y - ref))) if ref is not None else 0.0
                g = tf.constant(rng.random(y.shape).astype(np.float32))
                if ref is not None:  # check the backward against the reference's autodiff
                    gref = tf.function(lambda a, g: fb(a, g, fn=refs[0]))(x, g).numpy()
                    gerr = float(np.max(np.abs(tf.function(fb)(x, g).numpy() - gref)))
                    err = max(err, gerr)
                tf_ = bench(f, x)
                try:
                    tb = bench(tf.function(fb, jit_compile=jit), x, g)
                except Exception as exc:  # noqa: BLE001
                    tb = None
                    log(f"    {name:22s} jit={int(jit)} backward failed: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}")
                res.append(dict(variant=name, jit=jit, shape=x.shape.as_list(), fwd=tf_, fwd_bwd=tb,
                                err=err))
                log(f"    {name:22s} jit={int(jit)} fwd {fmt(tf_)}  fwd+bwd "
                    f"{fmt(tb) if tb else 'n/a':>32s}  err {err:.1e}")
            except Exception as exc:  # noqa: BLE001
                res.append(dict(variant=name, jit=jit, error=f"{type(exc).__name__}: {exc}"[:500]))
                log(f"    {name:22s} jit={int(jit)} failed: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]}")

    def compare(title, x, variants):
        """Time each ``(name, fn)`` on ``x``; the first is the reference of the others."""
        refs[0] = variants[0][1]
        ref = refs[0](x).numpy()
        log(f"  {title}")
        for name, fn in variants:
            run(name, fn, x, ref)

    for d, hw in ((2, 29), (16, 43)):
        compare(f"depthwise 2x2 d={d} full padding, input [H={hw}, W={hw}, B=64, C=16]",
                tf.constant(rng.standard_normal((hw, hw, 64, 16)).astype(np.float32)),
                [(f"slices_add_n(d={d})", lambda a, d=d: _depthwise_slices(a, d, d)),
                 (f"two_pass(d={d})", lambda a, d=d: _depthwise_two_pass(a, d, d)),
                 (f"slices_custom_grad(d={d})",
                  lambda a, d=d: _depthwise_slices_custom_grad(a, d, d)),
                 (f"conv2d_ones(d={d})", lambda a, d=d: _depthwise_conv(a, d, d))])
    compare("depthwise 2x2 stride 2, input [28, 28, 128, 32] (the classifier's first product)",
            tf.constant(rng.standard_normal((28, 28, 128, 32)).astype(np.float32)),
            [("stride2_slices", _stride2_slices), ("stride2_blocks", _stride2_blocks)])
    compare("one-hot 2x2 (4^4 = 256 channels) d=1 full padding, input [28, 28, 64, 4]",
            tf.constant(rng.standard_normal((28, 28, 64, 4)).astype(np.float32)),
            [("broadcast_add", _onehot_broadcast), ("pairwise_broadcast", _onehot_pairwise),
             ("conv2d_onehot_kernel", _onehot_conv)])
    if out is not None:
        out["products"] = res


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--breakdown", action="store_true")
    p.add_argument("--sums", action="store_true")
    p.add_argument("--routing", action="store_true")
    p.add_argument("--products", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "throughput_formulations.json"))
    args = p.parse_args()
    everything = not (args.breakdown or args.sums or args.routing or args.products)
    out = dict(loadavg_start=os.getloadavg()[0], tf_version=tf.__version__,
               devices=[d.device_type for d in tf.config.list_logical_devices()])
    if args.breakdown or everything:
        print("== per-layer breakdown, MNIST inpainting net, batch 64 (cells-major [H, W, B, C])")
        breakdown(out=out)
    if args.routing or everything:
        print("== hard_unweighted routing backward")
        routing(out=out)
    if args.sums or everything:
        print("== spatial sum formulations")
        sums(out=out)
    if args.products or everything:
        print("== product formulations")
        products(out=out)
    out["loadavg_end"] = os.getloadavg()[0]
    path = Path(args.out)
    if path.exists():  # keep sections from earlier partial runs
        old = json.loads(path.read_text())
        old.update(out)
        out = old
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
