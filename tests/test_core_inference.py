"""Inference of the TensorFlow core checked against brute force on tiny networks.

Every reference value is computed independently of the TF code path: by enumerating all
binary states / completions, or with the float64 numpy re-implementation and the explicit
top-down recursion of ``tests/_brute.py``.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from scipy.special import expit, logsumexp
from scipy.stats import chisquare

from _brute import NumpySPN, all_states, completions
from skspn.core import DGCSPN, BernoulliLeaf, CategoricalLeaf, NormalLeaf
from skspn.core.learning import CompiledOps, EMLearner, GradientLearner
from skspn.core.network import layer_sizes
from skspn.core.scopes import max_depth, plan_products, product_spec

INDICATOR = 30.0  # logits +-30: component 0 is 'x = 0', component 1 is 'x = 1'


# --------------------------------------------------------------------------- helpers


def plan(shape, first="one_hot", n_no=0, depth="auto", cap=256):
    if depth == "max":
        depth = max_depth(shape, 2, n_no)
    return plan_products(shape, depth=depth, n_nonoverlapping=n_no, first_product=first,
                         one_hot_max_channels=cap)


def randomize_weights(net, rng, scale=1.0):
    """Generic random weights on every sum layer (no ties)."""
    for layer in net.weight_layers:
        shape = tuple(layer.accumulator.shape)
        if layer.log_space:
            value = rng.normal(0.0, scale, size=shape)
        else:  # counts, some exactly zero (weight eps), some large
            value = rng.gamma(0.6, 3.0, size=shape) * (rng.random(shape) > 0.2)
        layer.accumulator.assign(value.astype(np.float32))


def bernoulli_net(shape, products, k=2, sum_channels=2, n_classes=None, log_space=True,
                  shared=False, seed=0, indicator=False, logit_scale=1.5):
    rng = np.random.default_rng(seed)
    h, w = shape
    if indicator:
        assert k == 2
        logits = np.broadcast_to(np.array([-INDICATOR, INDICATOR]), (h, w, 1, 2))
    else:
        logits = rng.normal(0.0, logit_scale, size=(h, w, 1, k))
    n_sums = max(len(products) - 1, 0)
    if isinstance(sum_channels, int):
        sum_channels = [sum_channels] * n_sums
    net = DGCSPN(shape, BernoulliLeaf(logits), products, sum_channels, n_classes=n_classes,
                 shared_sums=shared, log_space=log_space, seed=seed)
    randomize_weights(net, rng)
    return net


def to_tf(x):
    """``[B, H, W]`` float (NaN = missing) -> ``[B, H, W, 1]`` float32 tensor."""
    return tf.constant(np.asarray(x, np.float32)[..., None])


def tf_ll(net, x):
    return net.log_likelihood(to_tf(x)).numpy().astype(np.float64)


def tf_max(net, x):
    return net.forward(to_tf(x), routing="max")[1].numpy().astype(np.float64)


def states(shape):
    return all_states(shape[0] * shape[1]).reshape(-1, *shape)


def binary_with_evidence(shape, n_complete, n_evidence, rng):
    """``n_complete`` random binary images of ``shape``, then ``n_evidence`` with some
    pixels missing (``random_evidence``)."""
    return np.concatenate([rng.integers(0, 2, size=(n_complete,) + tuple(shape)).astype(
        np.float64), random_evidence(shape, n_evidence, rng)])


def random_evidence(shape, n_rows, rng, min_hidden=1, min_observed=1):
    n = shape[0] * shape[1]
    rows = []
    while len(rows) < n_rows:
        mask = rng.random(n) < 0.5
        if mask.sum() < min_hidden or (~mask).sum() < min_observed:
            continue
        row = rng.integers(0, 2, size=n).astype(np.float64)
        row[mask] = np.nan
        rows.append(row.reshape(shape))
    return np.stack(rows)


def hand_built_2x4(cap=5):
    return [product_spec((1, 2), strides=(1, 2), padding="valid", mode="one_hot",
                         n_channels=cap, name="stride2"),
            product_spec((2, 2), padding="full", name="full_d1"),
            product_spec((2, 2), dilations=2, padding="final", name="final_d2")]


CASES = {
    "1x1-leaf-only": dict(shape=(1, 1), products=[], k=3),
    "1x2-onehot": dict(shape=(1, 2), products=plan((1, 2))),
    "2x3-onehot": dict(shape=(2, 3), products=plan((2, 3))),
    "2x3-depthwise-stride2": dict(shape=(2, 3), products=plan((2, 3), "depthwise", 1), k=3),
    "2x3-onehot-maxdepth": dict(shape=(2, 3), products=plan((2, 3), depth="max")),
    "3x3-onehot": dict(shape=(3, 3), products=plan((3, 3)), sum_channels=3),
    "3x3-depthwise-stride2-maxdepth": dict(shape=(3, 3), products=plan((3, 3), "depthwise", 1,
                                                                       "max")),
    "3x3-onehot-subset": dict(shape=(3, 3), products=plan((3, 3), cap=7), k=3),
    "1x5-onehot-stride2": dict(shape=(1, 5), products=plan((1, 5), "one_hot", 1)),
    "1x5-depthwise-maxdepth": dict(shape=(1, 5), products=plan((1, 5), "depthwise", 0, "max")),
    "2x3-classes3": dict(shape=(2, 3), products=plan((2, 3)), n_classes=3),
    "2x2-classes3-maxdepth": dict(shape=(2, 2), products=plan((2, 2), "depthwise", 1, "max"),
                                  n_classes=3, k=3),
    "3x3-counts": dict(shape=(3, 3), products=plan((3, 3)), log_space=False),
    "2x3-counts-classes-depthwise-stride2": dict(shape=(2, 3),
                                                 products=plan((2, 3), "depthwise", 1),
                                                 log_space=False, n_classes=2),
    "3x3-shared": dict(shape=(3, 3), products=plan((3, 3), "depthwise"), shared=True),
    "2x4-hand-built-stride2-final": dict(
        shape=(2, 4), k=3,
        products=[product_spec((1, 2), strides=(1, 2), padding="valid", mode="one_hot"),
                  product_spec((2, 2), padding="final")]),
    "2x4-hand-built-stride2-full-final": dict(shape=(2, 4), products=hand_built_2x4(), k=3),
    # a dilated stride-2 product: TensorFlow's autodiff differentiates it (no hand-written
    # transpose), through the log-values of the layer below
    "3x3-hand-built-dilated-stride2": dict(
        shape=(3, 3), products=[product_spec((2, 2), padding="full", mode="one_hot"),
                                product_spec((2, 2), dilations=2, strides=2,
                                             padding="final")]),
}


def build(name, seed=0, **over):
    cfg = dict(CASES[name])
    cfg.update(over)
    return bernoulli_net(cfg.pop("shape"), cfg.pop("products"), seed=seed, **cfg)


# --------------------------------------------------------------------------- 1. normalisation


@pytest.mark.parametrize("name", list(CASES))
def test_normalises_by_enumeration(name):
    net = build(name, seed=1)
    shape = net.spatial_shape
    x = states(shape)
    ll = tf_ll(net, x)
    assert np.all(np.isfinite(ll))
    assert abs(np.exp(logsumexp(ll)) - 1.0) < 1e-5
    nan = np.full((2,) + shape, np.nan)
    np.testing.assert_allclose(tf_ll(net, nan), 0.0, atol=1e-5)
    if net.n_classes:
        # Each class sum is a normalised distribution; the joint adds the class prior.
        joint = net.joint_log_likelihood(to_tf(x)).numpy().astype(np.float64)
        log_prior = net.class_prior.log_weights().numpy()[0, :, 0].astype(np.float64)
        assert np.std(log_prior) > 0.05  # the random prior is not uniform
        np.testing.assert_allclose(logsumexp(joint, axis=0), log_prior, atol=1e-5)
        np.testing.assert_allclose(logsumexp(joint, axis=1), ll, atol=1e-5)
        joint_nan = net.joint_log_likelihood(to_tf(nan)).numpy()
        np.testing.assert_allclose(joint_nan, np.broadcast_to(log_prior, joint_nan.shape),
                                   atol=1e-5)


def test_categorical_and_multicolour_leaves_normalise_and_marginalise():
    rng = np.random.default_rng(30)
    # Categorical leaves, 3 categories, 1x3 pixels: 27 states.
    shape = (1, 3)
    net = DGCSPN(shape, CategoricalLeaf(rng.normal(size=shape + (1, 2, 3))), plan(shape), [2])
    randomize_weights(net, rng)
    x = np.array(list(itertools.product(range(3), repeat=3)), np.float64).reshape(-1, *shape)
    ll = tf_ll(net, x)
    assert abs(np.exp(logsumexp(ll)) - 1.0) < 1e-5
    np.testing.assert_allclose(tf_ll(net, np.full((1,) + shape, np.nan)), 0.0, atol=1e-5)
    marg = logsumexp(ll.reshape(3, 3, 3), axis=1).reshape(-1)  # sum out pixel (0, 1)
    order = [(a, c) for a in range(3) for c in range(3)]
    got = tf_ll(net, np.array([[[a, np.nan, c]] for a, c in order]))
    np.testing.assert_allclose(got, marg, atol=1e-5)
    # Bernoulli with 2 colours per pixel, 2x2 pixels: 256 states; a cell's scope is the
    # whole pixel, and marginalising one colour of a pixel is exact too.
    shape = (2, 2)
    net = DGCSPN(shape, BernoulliLeaf(rng.normal(size=shape + (2, 3))), plan(shape), [])
    randomize_weights(net, rng)
    x = all_states(8).reshape(-1, 2, 2, 2)
    ll = net.log_likelihood(tf.constant(x, tf.float32)).numpy().astype(np.float64)
    assert abs(np.exp(logsumexp(ll)) - 1.0) < 1e-5
    xm = x.copy()
    xm[:, 1, 0, 1] = np.nan
    llm = net.log_likelihood(tf.constant(xm, tf.float32)).numpy()
    zero, one = x[:, 1, 0, 1] == 0, x[:, 1, 0, 1] == 1
    np.testing.assert_allclose(np.logaddexp(ll[zero], ll[one]), llm[zero], atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_cases_cover_the_intended_geometry(name):
    net = build(name)
    strides = [op.stride for p in net.products for op in p.axes]
    modes = [p.mode for p in net.products]
    assert ("stride2" in name) == (2 in strides)
    if "onehot" in name:
        assert modes[0] == "one_hot"
    if "depthwise" in name:
        assert set(modes) == {"depthwise"}
    if "subset" in name:
        assert net.products[0].channel_index is not None
    if "maxdepth" in name:
        assert len(net.products) == max_depth(net.spatial_shape, 2, 1 if "stride2" in name else 0)
    if "full-final" in name or "maxdepth" in name or "onehot" in name:
        # stride-1 layers with full padding and a final crop
        assert any(op.pad_before > 0 for p in net.products for op in p.axes)


def test_hand_built_stack_has_expected_geometry():
    net = build("2x4-hand-built-stride2-full-final")
    p0, p1, p2 = net.products
    assert p0.out_shape == (2, 2) and p0.out_channels == 5 and p0.channel_index is not None
    # The d=2 'final' layer has 3 full-scope cells per axis, but the last one is a copy of
    # p1's middle cell (its other child is padding), exactly like the first: it is dropped.
    assert p1.out_shape == (3, 3) and p2.out_shape == (2, 2)
    assert net.report.top_shape == (2, 2)


@pytest.mark.parametrize("n_classes", [None, 3])
@pytest.mark.parametrize("name", [n for n in CASES if not CASES[n].get("shared")])
def test_layer_sizes_count_what_the_network_builds(name, n_classes):
    # The estimators refuse networks too large for memory from these sizes, computed
    # without building the network: every sum's weights (the top sums and the class
    # prior included) and every layer's values per sample must be the built ones.
    cfg = dict(CASES[name])
    net = build(name, n_classes=n_classes)
    sizes = layer_sizes(net.spatial_shape, cfg.get("k", 2), cfg["products"],
                        [s.out_channels for s in net.sums], n_classes)
    weights = {layer: n for layer, _, n in sizes if n}
    assert weights == {layer.name: int(np.prod(layer.accumulator.shape))
                       for layer in net.weight_layers}
    values = {layer: n for layer, n, _ in sizes}
    for i, p in enumerate(net.products):
        assert values[f"product_{i}"] == int(np.prod(p.out_shape)) * p.out_channels
    for i, s in enumerate(net.sums):
        assert values[f"sum_{i}"] == s.n_cells * s.out_channels
    assert values["class_sums" if n_classes else "root"] == (n_classes or 1)


def test_weights_actually_matter():
    # Guards the normalisation tests against a network that ignores its sum weights:
    # two random weight draws must give different likelihoods.
    a, b = build("3x3-onehot", seed=1), build("3x3-onehot", seed=2)
    b.leaf.logits.assign(a.leaf.logits)
    x = states((3, 3))[:64]
    assert np.max(np.abs(tf_ll(a, x) - tf_ll(b, x))) > 1e-2


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_reference_agrees_with_tf_forward(name):
    net = build(name, seed=3)
    ref = NumpySPN(net)
    x = np.concatenate([states(net.spatial_shape)[:128],
                        random_evidence(net.spatial_shape, 8, np.random.default_rng(0),
                                        min_hidden=0, min_observed=0)])
    np.testing.assert_allclose(tf_ll(net, x), ref.log_likelihood(x), atol=2e-5, rtol=1e-6)
    np.testing.assert_allclose(tf_max(net, x), ref.log_likelihood(x, mode="max"),
                               atol=2e-5, rtol=1e-6)
    # And the numpy reference itself normalises (it is a true distribution).
    assert abs(np.exp(logsumexp(ref.log_likelihood(states(net.spatial_shape)))) - 1) < 1e-10


# --------------------------------------------------------------------------- 2. marginals


@pytest.mark.parametrize("name", [c for c in CASES if CASES[c]["shape"] != (1, 1)])
def test_marginal_equals_sum_over_completions(name):
    net = build(name, seed=4)
    shape = net.spatial_shape
    rows = random_evidence(shape, 5, np.random.default_rng(5))
    marg = tf_ll(net, rows)
    for row, m in zip(rows, marg):
        comp = completions(row)
        assert abs(m - logsumexp(tf_ll(net, comp))) < 1e-4


# --------------------------------------------------------------------------- 3. posteriors


def leaf_posterior(net, x):
    post, _ = net.leaf_signal(to_tf(x), "soft")
    return np.transpose(post.numpy().astype(np.float64), [2, 0, 1, 3])  # [B, H, W, K]


def p_one_given_evidence(ref, row, pixel):
    """Brute force P(x_pixel = 1 | evidence) by enumeration over the hidden pixels."""
    comp = completions(row)
    ll = ref.log_likelihood(comp)
    on = comp[:, pixel[0], pixel[1]] == 1.0
    return np.exp(logsumexp(ll[on]) - logsumexp(ll))


@pytest.mark.parametrize("name", ["2x3-onehot", "3x3-depthwise-stride2-maxdepth", "2x3-classes3",
                                  "2x4-hand-built-stride2-full-final", "3x3-shared"])
def test_leaf_posteriors_hidden_pixels_mixture_identity(name):
    net = build(name, seed=6, k=2)
    ref = NumpySPN(net)
    shape = net.spatial_shape
    rows = random_evidence(shape, 6, np.random.default_rng(7))
    rows = np.concatenate([rows, np.full((1,) + shape, np.nan)])
    post = leaf_posterior(net, rows)
    assert post.shape == rows.shape + (2,)
    p1 = expit(ref.logits)  # [H, W, K]: P_k(x = 1)
    np.testing.assert_allclose(post.sum(-1), 1.0, atol=1e-5)
    assert post.min() > -1e-6
    n_checked = 0
    for b, row in enumerate(rows):
        for i, j in zip(*np.nonzero(np.isnan(row))):
            q = p_one_given_evidence(ref, row, (i, j))
            # With K = 2 the identity and sum-to-one determine the posterior uniquely.
            assert abs(np.dot(post[b, i, j], p1[i, j]) - q) < 1e-4, (b, i, j)
            n_checked += 1
    assert n_checked >= 8


@pytest.mark.parametrize("name", ["2x3-onehot", "1x5-depthwise-maxdepth", "2x2-classes3-maxdepth"])
def test_leaf_posteriors_observed_pixels_bayes_rule(name):
    """Observed pixel i: P(k | e) = P(k | e without x_i) P_k(x_i) / P(x_i | e without x_i)."""
    net = build(name, seed=8, k=2)
    ref = NumpySPN(net)
    shape = net.spatial_shape
    rows = random_evidence(shape, 4, np.random.default_rng(9))
    post = leaf_posterior(net, rows)
    p1 = expit(ref.logits)
    n_checked = 0
    for b, row in enumerate(rows):
        obs = list(zip(*np.nonzero(~np.isnan(row))))
        dropped = np.stack([row.copy() for _ in obs])
        for n, (i, j) in enumerate(obs):
            dropped[n, i, j] = np.nan
        post_dropped = leaf_posterior(net, dropped)
        for n, (i, j) in enumerate(obs):
            lik = p1[i, j] if row[i, j] == 1 else 1.0 - p1[i, j]  # P_k(x_i) [K]
            prior = post_dropped[n, i, j]
            expect = prior * lik / np.dot(prior, lik)
            np.testing.assert_allclose(post[b, i, j], expect, atol=1e-4)
            n_checked += 1
    assert n_checked >= 8


def test_leaf_posteriors_observed_indicator_leaves():
    net = build("3x3-onehot", seed=10, indicator=True)
    rows = random_evidence((3, 3), 6, np.random.default_rng(11))
    post = leaf_posterior(net, rows)
    obs = ~np.isnan(rows)
    # Component 1 is 'x = 1': its posterior is the observed value.
    np.testing.assert_allclose(post[..., 1][obs], rows[obs], atol=1e-6)
    np.testing.assert_allclose(post[..., 0][obs], 1.0 - rows[obs], atol=1e-6)


@pytest.mark.parametrize("name", ["2x3-onehot", "3x3-depthwise-stride2-maxdepth", "2x3-classes3"])
def test_marginal_imputation_keeps_observed_and_thresholds_brute_force(name):
    net = build(name, seed=12, k=2)
    ref = NumpySPN(net)
    shape = net.spatial_shape
    rows = random_evidence(shape, 6, np.random.default_rng(13))
    out = net.complete(to_tf(rows), "marginal").numpy()[..., 0]
    obs = ~np.isnan(rows)
    assert np.array_equal(out[obs], rows[obs].astype(np.float32))
    n_checked = 0
    for b, row in enumerate(rows):
        for i, j in zip(*np.nonzero(np.isnan(row))):
            q = p_one_given_evidence(ref, row, (i, j))
            if abs(q - 0.5) > 1e-3:  # Bernoulli completion = the more probable value
                assert out[b, i, j] == float(q > 0.5), (b, i, j, q)
                n_checked += 1
    assert n_checked >= 8


def test_marginal_imputation_keeps_observed_bits_normal_leaf():
    rng = np.random.default_rng(14)
    shape = (4, 4)
    loc = rng.normal(size=shape + (1, 3))
    net = DGCSPN(shape, NormalLeaf(loc, scale=0.7), plan(shape), [3])
    randomize_weights(net, rng)
    x = rng.normal(size=(5,) + shape).astype(np.float32)
    x[0, 0, 0] = -0.0
    x[1, 1, 1] = np.float32(1.2345678e-30)
    x[2, 2, 2] = np.float32(1e15)
    x[rng.random(x.shape) < 0.4] = np.nan
    out = net.complete(to_tf(x), "marginal").numpy()[..., 0]
    obs = ~np.isnan(x)
    assert np.array_equal(out[obs].view(np.uint32), x[obs].view(np.uint32))
    assert np.all(np.isfinite(out[~obs]))
    # Hidden values are posterior-weighted component means: inside the means' hull.
    lo, hi = loc.min(axis=(-1, -2)), loc.max(axis=(-1, -2))
    b, i, j = np.nonzero(~obs)
    assert np.all(out[b, i, j] >= lo[i, j] - 1e-5) and np.all(out[b, i, j] <= hi[i, j] + 1e-5)


# --------------------------------------------------------------------------- 4. MPE


MPE_CASES = ["2x3-onehot", "2x2-classes3-maxdepth", "1x5-onehot-stride2",
             "2x4-hand-built-stride2-full-final", "3x3-shared"]


@pytest.mark.parametrize("name", MPE_CASES)
def test_mpe_attains_brute_force_max_product(name):
    net = build(name, seed=15, k=2, indicator=True)
    ref = NumpySPN(net)
    shape = net.spatial_shape
    rows = np.concatenate([np.full((1,) + shape, np.nan),
                           random_evidence(shape, 4, np.random.default_rng(16))])
    mpe = net.complete(to_tf(rows), "mpe", tf.constant([3, 4], tf.int64)).numpy()[..., 0]
    obs = ~np.isnan(rows)
    assert np.array_equal(mpe[obs], rows[obs])
    assert set(np.unique(mpe)) <= {0.0, 1.0}
    value_mpe = tf_max(net, mpe)
    _, sel, gap = ref.top_down(rows, choice="hard", mode="max")
    assert gap > 1e-3  # generic weights: the max-product tree is unique
    assert np.all(sel.sum(axis=-1) == 1)  # a tree covers every pixel exactly once
    for b, row in enumerate(rows):
        comp = completions(row)
        vals = tf_max(net, comp)
        np.testing.assert_allclose(vals, ref.log_likelihood(comp, mode="max"), atol=1e-4)
        best = vals.max()
        assert abs(value_mpe[b] - best) < 1e-4, (b, value_mpe[b], best)
        # The max-product completion is unique here: it is the brute-force argmax, and the
        # explicit top-down recursion selects the same leaves.
        assert np.array_equal(mpe[b], comp[np.argmax(vals)])
        assert np.array_equal(mpe[b][~obs[b]], np.argmax(sel[b], axis=-1)[~obs[b]])


@pytest.mark.parametrize("name", MPE_CASES)
def test_mpe_maximises_hidden_entries_of_soft_leaves(name):
    # Leaves that are not 0/1 indicators: a hidden entry's best value under a component is
    # its mode (probability max(p, 1 - p)), not 1 as when it is summed out. Routing on
    # summed-out leaves picked a tree of lower max-product value (the completion came out
    # worse under both the max-product and the joint in a review's examples).
    net = build(name, seed=15, k=2, indicator=False)
    rng = np.random.default_rng(16)
    leaf_logits = rng.normal(scale=2.0, size=net.leaf.logits.shape)
    net.leaf.logits.assign(leaf_logits.astype(np.float32))
    shape = net.spatial_shape
    rows = np.concatenate([np.full((1,) + shape, np.nan),
                           random_evidence(shape, 6, rng)])
    x = to_tf(rows)
    signal, value_max = net.leaf_signal(x, "max", tf.constant([3, 4], tf.int64))
    mpe = net.complete(x, "mpe", tf.constant([3, 4], tf.int64)).numpy()[..., 0]
    value_mpe = tf_max(net, mpe)
    for b, row in enumerate(rows):
        vals = tf_max(net, completions(row))
        # The routed value is the max-product maximum, attained by the completion.
        assert abs(value_max.numpy()[b] - vals.max()) < 1e-4, (b, value_max[b], vals.max())
        assert abs(value_mpe[b] - vals.max()) < 1e-4, (b, value_mpe[b], vals.max())


def test_mpe_of_categorical_leaves_attains_the_max_product():
    rng = np.random.default_rng(31)
    shape = (1, 3)
    grid = np.array(list(itertools.product(range(3), repeat=3)), np.float64).reshape(-1, *shape)
    rows = np.array([[[np.nan, np.nan, np.nan]], [[1.0, np.nan, np.nan]],
                     [[np.nan, 2.0, np.nan]], [[np.nan, 0.0, 1.0]], [[2.0, np.nan, 0.0]]])
    for _ in range(4):
        net = DGCSPN(shape, CategoricalLeaf(rng.normal(scale=2.0, size=shape + (1, 2, 3))),
                     plan(shape), [2])
        randomize_weights(net, rng)
        mpe = net.complete(to_tf(rows), "mpe").numpy()[..., 0]
        for b, row in enumerate(rows):
            fits = np.all((grid == row) | np.isnan(row), axis=(1, 2))
            best = tf_max(net, grid[fits]).max()
            assert abs(tf_max(net, mpe[b:b + 1])[0] - best) < 1e-4, (b, mpe[b])


def test_mpe_of_normal_leaves_of_different_scales_attains_the_max_product():
    # A narrow component's mode is worth more than a wide one's.
    rng = np.random.default_rng(32)
    values = np.linspace(-4, 4, 8001)
    for _ in range(6):
        loc = rng.normal(size=(1, 2, 1, 2))
        scale = np.exp(rng.uniform(np.log(0.05), np.log(2.0), size=(1, 2, 1, 2)))
        net = DGCSPN((1, 2), NormalLeaf(loc, scale), plan((1, 2)), [])
        randomize_weights(net, rng)
        observed = float(rng.normal())
        completed = net.complete(to_tf(np.array([[[np.nan, observed]]])), "mpe").numpy()
        grid_normal = np.stack([values, np.full_like(values, observed)], -1).reshape(-1, 1, 2)
        best = tf_max(net, grid_normal).max()
        assert tf_max(net, completed[..., 0])[0] > best - 1e-4, (completed, best)


def test_normal_leaves_far_out_stay_finite_and_favour_the_wider_component():
    # The square of the distance is capped (it overflowed float32 to -inf); the cap is on
    # the distance, the same for all components, so the wider one keeps explaining an
    # outlier better, and its scale's gradient keeps pointing up.
    leaf = NormalLeaf(np.zeros((1, 1, 1, 2)), scale=np.array([[[[0.1, 10.0]]]]),
                      trainable=True)
    for value in (1e3, 1e17, 1e25, 3e38):
        x = tf.constant([[[[value]]]], tf.float32)
        with tf.GradientTape() as tape:
            lp = leaf.component_log_prob(x)
            wide = lp[..., 1]
        grad = tape.gradient(wide, leaf.log_scale).numpy().ravel()
        lp = lp.numpy().ravel()
        assert np.all(np.isfinite(lp)) and lp[1] > lp[0], (value, lp)
        assert grad[1] > 0, (value, grad)


def test_max_leaf_log_probs_compiled_match_eager():
    # Images of >= XLA_MIN_PIXELS pixels take the compiled leaf pass; 'max' there too.
    rng = np.random.default_rng(40)
    shape = (16, 16)
    net = DGCSPN(shape, NormalLeaf(rng.normal(size=shape + (1, 3)),
                                   scale=rng.uniform(0.2, 2.0, size=shape + (1, 3))),
                 plan(shape, first="depthwise"), [2] * (len(plan(shape)) - 1))
    x = rng.normal(size=(4,) + shape + (1,))
    x[rng.random(x.shape) < 0.5] = np.nan
    x = tf.constant(x, tf.float32)
    for hidden in ("marginal", "max"):
        np.testing.assert_allclose(net.leaf_log_prob(x, hidden).numpy(),
                                   net._leaf_log_prob(x, hidden).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(net.leaf_log_prob(x, "max").numpy(),
                           net.leaf_log_prob(x, "marginal").numpy())


@pytest.mark.parametrize("name", MPE_CASES + ["3x3-counts"])
def test_max_product_never_exceeds_likelihood(name):
    for indicator in (True, False):
        net = build(name, seed=17, k=2, indicator=indicator)
        x = states(net.spatial_shape)
        mx, ll = tf_max(net, x), tf_ll(net, x)
        assert np.all(mx <= ll + 1e-5)
        if len(net.products) > 0:
            assert np.max(ll - mx) > 1e-3  # max-product is a different (lower) quantity


# --------------------------------------------------------------------------- 5. sampling


def _chisquare_counts(samples, log_p):
    """Chi-square goodness of fit of sample rows against state log-probabilities."""
    n_vars = samples.shape[1]
    codes = (samples.astype(np.int64) * (1 << np.arange(n_vars)[::-1])).sum(axis=1)
    observed = np.bincount(codes, minlength=1 << n_vars).astype(np.float64)
    expected = np.exp(log_p) / np.exp(logsumexp(log_p)) * len(samples)
    big = expected >= 5.0
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert big.sum() >= 4, "the test needs a few well-populated states"
    return chisquare(obs, exp)


N_SAMPLES = 4000


@pytest.mark.parametrize("name,indicator", [("1x2-onehot", True), ("2x2-classes3-maxdepth", True),
                                            ("2x3-depthwise-stride2", False),
                                            ("2x3-classes3", False)])
def test_unconditional_sampling_matches_likelihood(name, indicator):
    over = dict(indicator=True, k=2) if indicator else {}
    net = build(name, seed=18, **over)
    ref = NumpySPN(net)
    shape = net.spatial_shape
    x = np.full((N_SAMPLES,) + shape, np.nan)
    s = net.complete(to_tf(x), "sample", tf.constant([11, 12], tf.int64)).numpy()[..., 0]
    assert set(np.unique(s)) <= {0.0, 1.0}
    flat = s.reshape(N_SAMPLES, -1)
    # Rows are distinct draws, not one draw repeated.
    assert len({tuple(r) for r in flat}) > 1
    log_p = ref.log_likelihood(states(shape))
    res = _chisquare_counts(flat, log_p)
    assert res.pvalue > 1e-3, res


@pytest.mark.parametrize("name", ["2x3-onehot", "2x3-classes3", "3x3-depthwise-stride2-maxdepth"])
def test_conditional_sampling_matches_brute_force_conditional(name):
    net = build(name, seed=19)
    ref = NumpySPN(net)
    shape = net.spatial_shape
    row = np.full(shape, np.nan)
    row[0, 0], row[-1, -1] = 1.0, 0.0
    if shape[0] * shape[1] > 6:
        row[1, 1] = 1.0
    x = np.repeat(row[None], N_SAMPLES, axis=0)
    s = net.complete(to_tf(x), "sample", tf.constant([21, 22], tf.int64)).numpy()[..., 0]
    obs = ~np.isnan(x)
    assert np.array_equal(s[obs], x[obs])
    hidden = np.isnan(row).reshape(-1)
    comp = completions(row)
    log_p = ref.log_likelihood(comp)  # joint of each completion, ordered like all_states
    res = _chisquare_counts(s.reshape(N_SAMPLES, -1)[:, hidden], log_p)
    assert res.pvalue > 1e-3, res


def _deep_identity_net():
    """1x2 pixels, 8 identity (1x1) products then one 1x2 product: 8 spatial sums.

    Sums 0-6 and 8 are (numerically) identity maps between 2 channels; sum 7 picks its
    channel with probability 1/2; channel c leads to leaf component c with
    P(x = 1) = 0.9 (c = 0) or 0.5 (c = 1). So each pixel is an independent draw with
    P(x = 1) = 0.7, and the two pixels and the rows of a batch are independent.
    """
    specs = [product_spec((1, 1), name=f"identity_{i}") for i in range(8)]
    specs.append(product_spec((1, 2), name="top"))
    p = np.array([0.9, 0.5])
    logits = np.broadcast_to(np.log(p / (1 - p)), (1, 2, 1, 2))
    net = DGCSPN((1, 2), BernoulliLeaf(logits), specs, [2] * 8)
    for i, layer in enumerate(net.sums):
        acc = np.full((2, 2, 2), -1e4, np.float32)
        acc[:, 0, 0] = acc[:, 1, 1] = 0.0
        layer.accumulator.assign(np.zeros_like(acc) if i == 7 else acc)
    net.top.accumulator.assign(np.zeros(net.top.accumulator.shape, np.float32))
    return net


def test_sampling_deep_stack_rows_are_independent_draws():
    """Networks with >= 8 spatial sums (>= 9 products, e.g. 1x100 strips at depth 9 or
    images larger than 64x64 at their maximum depth) must sample like shallow ones.

    Brute force: the model above has P(x = 1) = 0.7 per pixel, all independent. Check the
    frequencies and the independence between row k and rows 2k, 2k + 1 of one batch.
    """
    from scipy.stats import chi2_contingency

    net = _deep_identity_net()
    ll = tf_ll(net, states((1, 2)))
    np.testing.assert_allclose(np.exp(ll), [0.09, 0.21, 0.21, 0.49], atol=1e-5)  # model check
    n = 8000
    s = net.complete(to_tf(np.full((n, 1, 2), np.nan)), "sample",
                     tf.constant([1, 2], tf.int64)).numpy()[:, 0, :, 0].astype(int)
    assert chisquare(np.bincount(s[:, 0] * 2 + s[:, 1], minlength=4),
                     np.array([0.09, 0.21, 0.21, 0.49]) * n).pvalue > 1e-3
    k = np.arange(1, n // 2)
    for label, partner in (("2k", 2 * k), ("2k + 1", 2 * k + 1)):
        table = np.zeros((2, 2))
        np.add.at(table, (s[k, 0], s[partner, 0]), 1)
        assert chi2_contingency(table).pvalue > 1e-3, (
            f"pixel 0 of rows k and {label} of one batch are dependent: {table.tolist()}")


# --------------------------------------------------------------------------- 6. EM counts

EM_CASES = {
    # depthwise first product: no exact ties between a sum's children even with padding,
    # so 'hard_unweighted' is deterministic.
    "2x2-depthwise-k3": dict(shape=(2, 2), products=plan((2, 2), "depthwise", 0, 2), k=3,
                             sum_channels=3),
    "1x3-depthwise-stride2-classes": dict(shape=(1, 3), products=plan((1, 3), "depthwise", 1,
                                                                      "max"),
                                          k=2, sum_channels=[3, 2, 3], n_classes=2),
    "2x2-depthwise-shared": dict(shape=(2, 2), products=plan((2, 2), "depthwise", 0, 3),
                                 k=3, sum_channels=[2, 3], shared=True),
    # one-hot with padding: children differing only in a padding cell's channel tie
    # exactly on their unweighted values, so only weighted routings are compared.
    "1x3-onehot-stride2": dict(shape=(1, 3), products=plan((1, 3), "one_hot", 1, 3), k=2,
                               sum_channels=[3, 2]),
    "2x4-hand-built": dict(shape=(2, 4), products=hand_built_2x4(cap=5), k=2,
                           sum_channels=[3, 2]),
}
EM_PARAMS = [(c, r) for c in EM_CASES for r in ("soft", "hard", "hard_unweighted")
             if not (r == "hard_unweighted" and "onehot" in c or
                     r == "hard_unweighted" and "hand-built" in c)]


def em_net(name, seed):
    cfg = dict(EM_CASES[name])
    return bernoulli_net(cfg.pop("shape"), cfg.pop("products"), seed=seed, logit_scale=2.0,
                         **cfg)


@pytest.mark.parametrize("name,routing", EM_PARAMS)
def test_em_counts_match_brute_force(name, routing):
    net = em_net(name, seed=20)
    ref = NumpySPN(net)
    shape = net.spatial_shape
    rng = np.random.default_rng(21)
    x = rng.integers(0, 2, size=(6,) + shape).astype(np.float64)
    if routing != "hard_unweighted":  # marginalised pixels tie unweighted children
        x = np.concatenate([x, random_evidence(shape, 3, rng), np.full((1,) + shape, np.nan)])
    counts, root = net.em_counts(to_tf(x), routing, tf.constant([5, 6], tf.int64))
    counts = [c.numpy().astype(np.float64) for c in counts]
    np.testing.assert_allclose(root.numpy(), ref.log_likelihood(x), atol=2e-5)
    assert len(counts) == len(ref.log_w)
    if routing == "soft":
        expect = ref.soft_counts(x)
        for c, e in zip(counts, expect):
            np.testing.assert_allclose(c, e, rtol=1e-3, atol=2e-5)
        # Expected counts of the root's children sum to the batch size.
        np.testing.assert_allclose(counts[-1].sum(), len(x), rtol=1e-5)
    else:
        expect, _, gap = ref.top_down(x, choice=routing)
        # No near-ties between distinct nodes (generic weights and logits): float32
        # rounding of values of order 10 is ~1e-6.
        assert gap > 1e-5
        top = len(net.sums)
        # Each sample's tree passes through the top once.
        assert counts[top].sum() == len(x)
        if routing == "hard_unweighted":
            # Top inputs that are copies of one node tie exactly on their (unweighted)
            # values and are chosen between at random: compare the top counts per class.
            classes = ref.top_input_classes()
            agg = [np.stack([np.bincount(classes, weights=cnt[0, :, o])
                             for o in range(cnt.shape[2])]) for cnt in (counts[top], expect[top])]
            np.testing.assert_array_equal(agg[0], agg[1])
            counts, expect = counts[:top] + counts[top + 1:], expect[:top] + expect[top + 1:]
        for layer, (c, e) in enumerate(zip(counts, expect)):
            assert np.array_equal(c, e), (layer, np.argwhere(c != e)[:5])


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", ["2x2-depthwise-k3", "1x3-depthwise-stride2-classes",
                                  "2x2-depthwise-shared", "2x4-hand-built"])
def test_log_likelihood_gradient_at_log_space_accumulators_matches_brute_force(
        name, fuse, monkeypatch):
    """The gradient that trains log-space accumulators (Adam): with ``w = softmax(a)`` over
    each sum's children, d sum_x log p(x) / d a = n - w * sum(n), ``n`` the expected counts
    (brute force). The forward pass normalises ``a`` itself (``SpatialSum.normalised``,
    one exponential and a hand-written gradient)."""
    from skspn.core import products

    monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
    monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    net = em_net(name, seed=20)
    net.fuse_products = fuse
    ref = NumpySPN(net)
    rng = np.random.default_rng(22)
    shape = net.spatial_shape
    x = binary_with_evidence(shape, 5, 3, rng)
    accumulators = [layer.accumulator for layer in net.weight_layers]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(net.log_likelihood(to_tf(x)))
    grads = tape.gradient(total, accumulators)
    np.testing.assert_allclose(total.numpy(), ref.log_likelihood(x).sum(), rtol=1e-5)
    for layer, (g, n, a) in enumerate(zip(grads, ref.soft_counts(x), accumulators)):
        w = tf.nn.softmax(a, axis=1).numpy().astype(np.float64)
        expect = n - w * n.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(g.numpy(), expect, rtol=1e-3, atol=2e-5, err_msg=layer)


def test_normalised_log_space_weights_and_their_gradient_match_the_formula():
    """``SpatialSum.normalised`` of log-space accumulators: ``log_softmax`` over the
    children, its exponential and minimum, and the gradient of both outputs as autodiff
    gives it for the formula (also with large accumulators, where a plain exp overflows)."""
    from skspn.core.sums import SpatialSum

    rng = np.random.default_rng(5)
    for scale in (1.0, 200.0):
        layer = SpatialSum(3, 5, 4, log_space=True,
                           init=(scale * rng.normal(size=(3, 5, 4))).astype(np.float32))
        g_log, g_lin = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
        for use in ("log", "linear", "both"):
            with tf.GradientTape(persistent=True) as tape:
                log_w, w, log_min = layer.normalised()
                expect_log = tf.nn.log_softmax(layer.accumulator, axis=1)
                expect_w = tf.exp(expect_log)
                losses = [tf.reduce_sum(g_log * lw) * (use != "linear")
                          + tf.reduce_sum(g_lin * ww) * (use != "log")
                          for lw, ww in ((log_w, w), (expect_log, expect_w))]
            got, expect = (tape.gradient(loss, layer.accumulator) for loss in losses)
            np.testing.assert_allclose(log_w, expect_log, rtol=1e-6, atol=1e-5)
            np.testing.assert_allclose(w, expect_w, rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(log_min, np.min(log_w.numpy(), axis=1))
            np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5, err_msg=use)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("learning", ["hard_em_unweighted", "hard_em", "soft_em"])
def test_epoch_em_normalises_once_per_pass_and_counts_as_each_step_would(learning, fuse,
                                                                         monkeypatch):
    """With ``update='epoch'`` the weights are fixed for a pass, so the learner normalises
    them once per pass; the accumulators after two passes are those of counting every
    batch with the network's own weights (formed anew each step), and the second pass uses
    the weights of the first's M-step."""
    from skspn.core import products
    from skspn.core.learning import EM_ROUTINGS, EMLearner

    monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
    monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    nets = [build("2x3-onehot-maxdepth", seed=41, log_space=False) for _ in range(2)]
    for net in nets:
        net.fuse_products = fuse
    learner, reference = EMLearner(nets[0], learning, update="epoch"), nets[1]
    normalise, calls = learner._normalised_weights, []
    learner._normalised_weights = lambda: calls.append(1) or normalise()
    rng = np.random.default_rng(42)
    batches = [binary_with_evidence((2, 3), 3, 2, rng) for _ in range(3)]
    weight = np.ones(5, np.float32)
    for epoch in range(2):
        pending = None
        for b, x in enumerate(batches):
            seed = np.array([epoch, b], np.int64)
            learner.step(to_tf(x), weight, seed)
            counts, _ = reference.em_counts(to_tf(x), EM_ROUTINGS[learning],
                                            tf.constant(seed), tf.constant(weight))
            pending = counts if pending is None else [p + c for p, c in zip(pending, counts)]
        learner.end_epoch()
        for layer, c in zip(reference.weight_layers, pending):
            layer.accumulator.assign(c)
        for a, b in zip(nets[0].weight_layers, reference.weight_layers):
            np.testing.assert_allclose(a.accumulator.numpy(), b.accumulator.numpy(),
                                       rtol=1e-4, atol=1e-5)
    assert len(calls) == 2  # once per pass


def test_epoch_em_pass_interrupted_starts_the_next_step_from_the_accumulators():
    """A pass counts with the weights of its first step; a step that fails (an interrupt,
    bad input) ends the pass, so changed accumulators count from the next step on."""
    from skspn.core.learning import EMLearner

    net = build("2x3-onehot-maxdepth", seed=43, log_space=False)
    learner = EMLearner(net, "hard_em_unweighted", update="epoch")
    x, weight, seed = to_tf(np.ones((4, 2, 3))), np.ones(4, np.float32), np.array([1, 2])
    learner.step(x, weight, seed)
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        learner.step(np.ones((4, 3, 3, 1), np.float32), weight, seed)  # wrong image shape
    randomize_weights(net, np.random.default_rng(44))
    fresh = EMLearner(net, "hard_em_unweighted", update="epoch").step(x, weight, seed)
    assert learner.step(x, weight, seed) == pytest.approx(fresh, rel=1e-6)


def _reachable_ops(graph_outputs):
    """The ops a compiled function runs to produce ``graph_outputs`` (the rest is pruned)."""
    seen, stack = set(), [t.op for t in graph_outputs]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("routing", ["soft", "hard_unweighted", "hard"])
def test_em_counts_form_no_log_of_every_weight_unless_the_routing_reads_it(
        routing, fuse, monkeypatch):
    """Routings that read only the linear weights count with respect to them: a compiled
    EM step then takes no log of every count-accumulator weight (a pass over all weights,
    5-8 % of an online USI step). Weighted choices read the log-weights (the check's
    control: the same search finds those logs)."""
    from skspn.core import products

    if fuse:
        monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
        monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    cfg = dict(EM_CASES["2x2-depthwise-k3"])
    net = bernoulli_net(cfg.pop("shape"), cfg.pop("products"), seed=20, logit_scale=2.0,
                        log_space=False, **cfg)
    x = np.random.default_rng(21).integers(0, 2, size=(6, 2, 2)).astype(np.float64)
    counts = tf.function(lambda x: net.em_counts(x, routing, tf.constant([5, 6], tf.int64)),
                         autograph=False).get_concrete_function(to_tf(x))
    weight_shapes = {tuple(layer.accumulator.shape) for layer in net.weight_layers}
    reached = _reachable_ops(counts.outputs)
    logs_of_weights = [op.name for op in counts.graph.get_operations()
                       if op.type == "Log" and op.name in reached
                       and tuple(op.outputs[0].shape) in weight_shapes]
    assert bool(logs_of_weights) == (routing == "hard"), logs_of_weights
    # and the counts are those taken with respect to the log-weights (brute force above)
    ref = NumpySPN(net)
    got = [c.numpy() for c in counts(to_tf(x))[0]]
    if routing == "soft":
        for c, e in zip(got, ref.soft_counts(x)):
            np.testing.assert_allclose(c, e, rtol=1e-3, atol=2e-5)
    else:
        for c, e in zip(got, ref.top_down(x, choice=routing)[0]):
            np.testing.assert_array_equal(c, e)


@pytest.mark.parametrize("routing", ["soft", "hard"])
def test_em_counts_with_sample_weights(routing):
    """``weight`` scales each sample's contribution (0 = padding row)."""
    net = em_net("1x3-depthwise-stride2-classes", seed=23)
    ref = NumpySPN(net)
    rng = np.random.default_rng(24)
    x = binary_with_evidence((1, 3), 4, 2, rng)
    weight = np.array([0.0, 1.0, 2.5, 0.5, 3.0, 1.0])
    counts, _ = net.em_counts(to_tf(x), routing, tf.constant([1, 1], tf.int64),
                              tf.constant(weight, tf.float32))
    counts = [c.numpy().astype(np.float64) for c in counts]
    if routing == "soft":
        expect = ref.soft_counts(x, weight=weight)
        for c, e in zip(counts, expect):
            np.testing.assert_allclose(c, e, rtol=1e-3, atol=2e-5)
    else:
        per_sample = [ref.top_down(x[b:b + 1], "hard")[0] for b in range(len(x))]
        for layer, c in enumerate(counts):
            e = sum(w * cnt[layer] for w, cnt in zip(weight, per_sample))
            np.testing.assert_allclose(c, e, rtol=1e-6, atol=1e-6)


def test_hard_routing_breaks_exact_ties_at_random():
    """All components of a marginalised pixel tie exactly: 'hard_unweighted' must pick
    among them uniformly at random (DESIGN.md: break ties at random), not always the first."""
    net = bernoulli_net((1, 1), [], k=3, seed=25)
    x = np.full((3000, 1, 1), np.nan)
    counts, _ = net.em_counts(to_tf(x), "hard_unweighted", tf.constant([9, 9], tf.int64))
    c = counts[0].numpy()[0, :, 0]
    assert c.sum() == len(x)
    assert chisquare(c).pvalue > 1e-3, c


def test_hard_and_unweighted_counts_differ_somewhere():
    # Guards the comparison above: the two hard routings are genuinely different queries.
    net = em_net("2x2-depthwise-k3", seed=20)
    x = np.random.default_rng(21).integers(0, 2, size=(6, 2, 2)).astype(np.float64)
    ref = NumpySPN(net)
    hard, _, _ = ref.top_down(x, "hard")
    unw, _, _ = ref.top_down(x, "hard_unweighted")
    assert any(not np.array_equal(a, b) for a, b in zip(hard, unw))


# --------------------------------------------------------------------------- 8. robustness


def test_64x64_full_depth_is_finite_with_missing_and_extreme_values():
    shape = (64, 64)
    depth = max_depth(shape) - 1
    assert depth == 7  # the paper's d = 1..32 plus a final d = 64 product
    products = plan_products(shape, depth=depth, first_product="one_hot")
    assert [op.dilation for op in (p.axes[0] for p in products)] == [1, 2, 4, 8, 16, 32, 64]
    rng = np.random.default_rng(22)
    loc = np.sort(rng.normal(size=shape + (1, 4)), axis=-1)
    leaf = NormalLeaf(loc, scale=1.0, trainable=True)
    net = DGCSPN(shape, leaf, products, [4] * (depth - 1), seed=0)
    variables = net.trainable_variables
    assert len(variables) == len(net.weight_layers) + 2  # accumulators + loc + log_scale

    def ll_and_grads(x):
        with tf.GradientTape() as tape:
            ll = net.log_likelihood(tf.constant(x, tf.float32))
            total = tf.reduce_sum(ll)
        return ll.numpy(), tape.gradient(total, variables)

    nan = np.full((2,) + shape + (1,), np.nan)
    ll, grads = ll_and_grads(nan)
    np.testing.assert_allclose(ll, 0.0, atol=1e-4)
    for v, g in zip(variables, grads):
        assert g is not None and np.all(np.isfinite(g.numpy())), v.name

    extreme = np.full((2,) + shape + (1,), 1e6)
    extreme[1, ::2] = -1e6
    extreme[1, :, ::3] = np.nan
    ll, grads = ll_and_grads(extreme)
    assert np.all(np.isfinite(ll)) and np.all(ll < -1e11)
    for v, g in zip(variables, grads):
        gn = g.numpy()
        assert np.all(np.isfinite(gn)), v.name
    # The likelihood responds to the data through the leaves.
    i_loc = [i for i, v in enumerate(variables) if v is leaf.loc][0]
    assert np.any(np.abs(grads[i_loc].numpy()) > 0)


def test_keyed_uniform_stays_inside_the_open_interval_at_the_extreme_bits(monkeypatch):
    """The smallest and largest hashes give uniforms strictly inside (0, 1), so Normal
    draws (``ndtri``) and Gumbel draws stay finite (24 bits rounded the largest to 1.0)."""
    from skspn.core import keyed_random

    keys = keyed_random.sample_keys(tf.constant([1, 2], tf.int64), tf.range(2))
    for extreme in (0, 2**32 - 1):
        monkeypatch.setattr(keyed_random, "bits",
                            lambda keys, shape, axis, e=extreme: tf.fill(shape, tf.constant(
                                e, tf.int64)))
        u = keyed_random.uniform(keys, [2, 3], 0).numpy()
        assert np.all((u > 0.0) & (u < 1.0)), u
        assert np.all(np.isfinite(tf.math.ndtri(u).numpy()))
        assert np.all(np.isfinite(-np.log(-np.log(u))))


def test_keyed_draws_depend_only_on_seed_and_sample_index():
    """What makes sharded (tf.distribute) training equal to one device: a sample's draws
    are the same whichever rows it is batched with."""
    from skspn.core import keyed_random

    seed = tf.constant([7, 11], tf.int64)
    full = keyed_random.uniform(keyed_random.sample_keys(seed, tf.range(10)), [3, 10, 4], 1)
    part = keyed_random.uniform(keyed_random.sample_keys(seed, tf.range(4, 7)), [3, 3, 4], 1)
    np.testing.assert_array_equal(full.numpy()[:, 4:7], part.numpy())
    other = keyed_random.uniform(keyed_random.sample_keys(seed + 1, tf.range(10)), [3, 10, 4], 1)
    assert not np.any(full.numpy() == other.numpy())
    # Uniform on (0, 1): 20 equal bins, chi-square with 19 dof (p = 0.001 at 43.8).
    u = keyed_random.uniform(keyed_random.sample_keys(seed, tf.range(500)), [500, 40], 0)
    u = u.numpy().ravel()
    assert 0.0 < u.min() and u.max() < 1.0
    counts = np.bincount((u * 20).astype(int), minlength=20)
    expected = len(u) / 20
    assert ((counts - expected) ** 2 / expected).sum() < 43.8
    # Neighbouring samples and elements are uncorrelated.
    grid = u.reshape(500, 40)
    assert abs(np.corrcoef(grid[:-1].ravel(), grid[1:].ravel())[0, 1]) < 0.03
    assert abs(np.corrcoef(grid[:, :-1].ravel(), grid[:, 1:].ravel())[0, 1]) < 0.03


def test_input_dropout_marginalises_a_random_subset_of_pixels():
    """Input dropout is exact marginalisation of whole pixels: every row's value equals
    the likelihood of that row with some subset of its pixels missing, and about ``rate``
    of the pixels are dropped."""
    net = build("3x3-onehot")
    rng = np.random.default_rng(3)
    x = (rng.random((40, 3, 3, 1)) < 0.5).astype(np.float32)
    seed = tf.constant([5, 9], tf.int64)
    _, dropped = net.forward(x, seed=seed, input_dropout=0.5)
    subsets = all_states(9).astype(bool)  # [512, 9]: True = marginalised
    masked = np.repeat(x.reshape(40, 1, 9), len(subsets), axis=1)
    masked[:, subsets] = np.nan
    candidates = net.log_likelihood(masked.reshape(-1, 3, 3, 1)).numpy().reshape(40, -1)
    n_dropped = []
    for row, value in zip(candidates, dropped.numpy()):
        match = np.flatnonzero(np.abs(row - value) < 1e-4)
        assert len(match) > 0, "not the likelihood of any marginalised version of the row"
        n_dropped.append(subsets[match].sum(axis=1).min())
    # 360 pixels, rate 0.5: mean 180, std 9.5 (the minimum over ties only lowers it).
    assert 140 < np.sum(n_dropped) < 200
    np.testing.assert_allclose(net.forward(x, seed=seed, input_dropout=0.0)[1],
                               net.log_likelihood(x), rtol=1e-6)


def test_product_dropout_lowers_values_and_is_keyed_per_sample():
    """Dropped product nodes are zeros, so no root value can rise and most fall; rate 1
    drops everything; a sample's mask does not depend on the rows batched with it."""
    net = build("3x3-onehot")
    rng = np.random.default_rng(4)
    x = (rng.random((12, 3, 3, 1)) < 0.5).astype(np.float32)
    seed = tf.constant([2, 3], tf.int64)
    full = net.log_likelihood(x).numpy()
    _, dropped = net.forward(x, seed=seed, product_dropout=0.3)
    dropped = dropped.numpy()
    assert np.all(dropped <= full + 1e-5)
    assert np.mean(dropped < full - 1e-3) > 0.5
    _, everything = net.forward(x, seed=seed, product_dropout=1.0)
    assert np.all(everything.numpy() < -1e29)
    _, part = net.forward(x[4:7], seed=seed, product_dropout=0.3,
                          sample_index=tf.range(4, 7))
    np.testing.assert_allclose(part.numpy(), dropped[4:7], rtol=1e-6)
    _, other_seed = net.forward(x, seed=seed + 1, product_dropout=0.3)
    assert not np.allclose(other_seed.numpy(), dropped)


def test_dropout_masks_made_apart_are_the_forward_pass_masks():
    """``dropout_masks`` (what an XLA-compiled training step is given) are the masks the
    forward pass draws itself: same keys, same values."""
    net = build("3x3-onehot")
    x = (np.random.default_rng(5).random((10, 3, 3, 1)) < 0.5).astype(np.float32)
    seed, index = tf.constant([7, 1], tf.int64), tf.range(3, 13)
    for product_dropout, input_dropout in ((0.3, 0.0), (0.0, 0.4), (0.3, 0.4)):
        masks = net.dropout_masks(seed, index, product_dropout, input_dropout)
        plan = net.dropout_plan(product_dropout, input_dropout)
        assert [tuple(m.shape) for m in masks] == [
            tuple(10 if n is None else n for n in shape) for _, shape, _ in plan]
        inline = net.forward(x, seed=seed, product_dropout=product_dropout,
                             input_dropout=input_dropout, sample_index=index)[1]
        given = net.forward(x, seed=seed, product_dropout=product_dropout,
                            input_dropout=input_dropout, sample_index=index,
                            keep_masks=masks)[1]
        np.testing.assert_array_equal(given.numpy(), inline.numpy())
        assert not np.allclose(inline.numpy(), net.log_likelihood(x).numpy())


def test_xla_training_step_with_dropout_equals_the_plain_step():
    """With ``jit_compile`` the gradient step gets its dropout masks from a separate
    compiled function: the step is the same as without XLA (same masks, same update)."""
    from skspn.core.learning import GradientLearner

    x = (np.random.default_rng(6).random((16, 3, 3, 1)) < 0.5).astype(np.float32)
    y = np.arange(16, dtype=np.int32) % 2
    weight, seed = np.ones(16, np.float32), np.array([3, 4], np.int64)
    results = []
    for jit in (False, True):
        net = build("3x3-onehot", n_classes=2)
        learner = GradientLearner(net, "ce", 1e-2, product_dropout=0.3, input_dropout=0.3,
                                  jit_compile=jit)
        assert bool(learner._mask_plan) == jit
        losses = [learner.step(x, weight, seed + i, y) for i in range(2)]
        results.append((losses, net.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- 9. fused layers

def products_summed_in_one_pass(monkeypatch):
    """A list that receives each product whose ``summed_from`` (a depthwise product and its
    sum in one pass, the value-only queries) runs, while the test runs."""
    from skspn.core.products import Product

    summed, summed_from = [], Product.summed_from
    monkeypatch.setattr(Product, "summed_from",
                        lambda self, *a: summed.append(self) or summed_from(self, *a))
    return summed


FUSED_CASES = {
    "3x3-onehot": {},  # one-hot first product, depthwise after: shifted-window transposes
    "1x5-onehot-stride2": {},  # interleave backward
    "3x3-onehot-subset": {},  # a one-hot channel subset (computed in log space, then scaled)
    "3x3-onehot-shared-counts": dict(name="3x3-onehot", shared=True, log_space=False),
    # Fused layers on fused layers: Product.scaled_from multiplies the values below.
    "2x3-onehot-maxdepth": {},
    "3x3-depthwise-stride2-maxdepth": {},  # interleave, then shifted windows
    # a fused layer below a product without a hand-written transpose (product_of takes
    # the log-values, to_log_values passes the signal on)
    "3x3-hand-built-dilated-stride2": {},
    # Log-weights down to about -60: a depthwise product of the fused layer's values could
    # underflow, so Product.scaled_from takes the log-values instead of multiplying (in one
    # of the two layers; the bound is per cell and channel).
    "2x3-onehot-maxdepth-extreme-weights": dict(name="2x3-onehot-maxdepth", weight_scale=8.0,
                                                all_multiply=False),
    # Log-weights down to about -45: n times the smallest weight of a layer (-73, -79) would
    # send both layers through the log-values, the bounds per cell and channel (-53, -38)
    # do not, so the values are multiplied over a wide range.
    "2x3-onehot-maxdepth-wide-weights": dict(name="2x3-onehot-maxdepth", weight_scale=6.0,
                                             all_multiply=True),
}


@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_product_sum_equals_separate_layers(case, monkeypatch):
    """Large layers run a product and the sum after it as one compiled op
    (``product_sum``), small ones apart (``fuse_products = False`` forces that): every
    query gives the same answer. The brute-force tests above check the separate layers
    (tiny nets); here every layer counts as large (``XLA_MIN_PIXELS = XLA_MIN_CELLS = 0``)."""
    from skspn.core import products

    monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
    monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    over = dict(FUSED_CASES[case])
    weight_scale = over.pop("weight_scale", None)
    all_multiply = over.pop("all_multiply", True)
    net = build(over.pop("name", case), seed=31, **over)
    assert any(p.scalable for p in net.products[:len(net.sums)])
    if weight_scale is not None:
        for layer in net.sums:
            layer.accumulator.assign(layer.accumulator * weight_scale)

    def multiplies():  # per fused layer on a fused layer: values multiplied, not logs
        lw = net.log_weights()
        return [bool(p.multiplies_scaled(floor_of(lw[i], p)))
                for i, p in enumerate(net.products[1:len(net.sums)]) if p.scalable]

    def floor_of(log_w, product):  # the smallest weight per cell and channel of the sum
        (h, w), c = product.resolved.in_shape, product.in_channels
        return tf.reshape(tf.reduce_min(log_w, axis=1), [h, w, 1, c])

    if case in ("3x3-onehot", "3x3-onehot-subset", "3x3-onehot-shared-counts",
                "3x3-hand-built-dilated-stride2"):
        assert multiplies() == []
    else:
        assert multiplies() and all(multiplies()) == all_multiply
    rng = np.random.default_rng(32)
    shape = net.spatial_shape
    x = np.concatenate([rng.integers(0, 2, size=(5,) + shape).astype(np.float64),
                        random_evidence(shape, 4, rng), np.full((1,) + shape, np.nan)])
    xt, seed = to_tf(x), tf.constant([3, 4], tf.int64)
    # In the all-missing row every node's value is 1 in exact arithmetic: its hard choices
    # compare values equal up to rounding, which the two formulations round differently.
    observed = to_tf(x[:-1])

    # the value-only pass: depthwise products on fused layers, with their sum
    summed = products_summed_in_one_pass(monkeypatch)

    def queries():
        out = {"ll": net.log_likelihood(xt), "max": net.forward(xt, routing="max")[1],
               "ll_value_only": net.log_likelihood(xt, forward_only=True)}
        for routing in ("soft", "max", "sample"):
            out["leaf_" + routing] = net.leaf_signal(xt, routing, seed)[0]
        for routing in ("soft", "hard", "hard_unweighted"):
            counts, _ = net.em_counts(xt if routing == "soft" else observed, routing, seed)
            out.update({f"{routing}_{i}": c for i, c in enumerate(counts)})
        return {k: v.numpy() for k, v in out.items()}

    fused = queries()
    depthwise_on_fused = [p for i, p in enumerate(net.products[1:len(net.sums)], 1)
                          if p.scalable and p.mode == "depthwise" and net.products[i - 1].scalable]
    assert set(summed) == set(depthwise_on_fused)
    assert bool(summed) == bool(multiplies())  # every case that multiplies values
    net.fuse_products = False
    separate = queries()
    for key, value in fused.items():
        if key.startswith(("ll", "max", "leaf_soft", "soft")):
            np.testing.assert_allclose(value, separate[key], rtol=1e-4, atol=1e-5, err_msg=key)
        elif weight_scale is not None and key.startswith("hard"):
            # Scaled weights saturate: a sum's weight on one child rounds to 1, so sibling
            # sums can be exactly equal in one formulation and an ulp apart in the other,
            # and the hard choice between them follows that rounding. The signal reaching
            # each layer is still the same.
            np.testing.assert_allclose(value.sum(), separate[key].sum(), rtol=1e-6, err_msg=key)
        else:  # hard choices: identical (no near-ties with generic weights)
            np.testing.assert_array_equal(value, separate[key], err_msg=key)


def test_value_only_queries_match_and_refuse_a_gradient(monkeypatch):
    """The compiled queries take the value-only pass (``forward_only``): the same
    log-likelihoods as the differentiable pass; differentiating a value-only pass is a
    clear error, not a wrong gradient."""
    from skspn.core import products

    monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
    monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    net = build("2x3-onehot-maxdepth", seed=31)
    summed = products_summed_in_one_pass(monkeypatch)
    x = to_tf(binary_with_evidence(net.spatial_shape, 4, 3, np.random.default_rng(3)))
    query = CompiledOps(net).log_likelihood(x).numpy()
    assert summed
    np.testing.assert_allclose(query, net.log_likelihood(x).numpy(), rtol=1e-5, atol=1e-5)
    accumulators = [layer.accumulator for layer in net.weight_layers]
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(net.log_likelihood(x, forward_only=True))
    with pytest.raises(ValueError, match="forward_only=True"):
        tape.gradient(total, accumulators)
    # Sums over more channels than SUMMED_MAX_IN_CHANNELS keep the product's pass and a
    # matmul (the one-pass reduction is far slower there).
    from skspn.core import product_sum

    channels = {layer.in_channels for layer in net.sums[1:]}
    monkeypatch.setattr(product_sum, "SUMMED_MAX_IN_CHANNELS", min(channels) - 1)
    del summed[:]
    np.testing.assert_allclose(CompiledOps(net).log_likelihood(x).numpy(), query, rtol=1e-5,
                               atol=1e-5)
    assert not summed


@pytest.mark.parametrize("rate", [0.3, 0.6])
@pytest.mark.parametrize("case", ["3x3-onehot", "1x5-onehot-stride2", "3x3-onehot-subset",
                                  "2x3-onehot-maxdepth", "3x3-depthwise-stride2-maxdepth",
                                  "3x3-hand-built-dilated-stride2"])
def test_fused_product_dropout_equals_dropout_between_separate_layers(case, rate,
                                                                      monkeypatch):
    """Product dropout inside the fused op (the gradient steps that drop) gives the values
    and gradients of dropping between separate layers: the same keyed masks, dropped
    products 0, a cell whose products were all dropped log 0 (frequent at rate 0.6 with
    these few channels), also with the masks made beforehand (``keep_masks``)."""
    from skspn.core import products

    monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
    monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    net = build(case, seed=31)
    rng = np.random.default_rng(33)
    shape = net.spatial_shape
    x = binary_with_evidence(shape, 6, 3, rng)
    xt, seed = to_tf(x), tf.constant([5, 8], tf.int64)
    index = tf.range(len(x))

    def run(keep_masks=None):
        with tf.GradientTape() as tape:
            _, root = net.forward(xt, seed=seed, product_dropout=rate, input_dropout=0.2,
                                  sample_index=index, keep_masks=keep_masks)
            # dead roots (log 0) carry no gradient in either formulation
            total = tf.reduce_sum(tf.where(root > -1e29, root, 0.0))
        grads = tape.gradient(total, net.trainable_variables)
        return root.numpy(), [g.numpy() for g in grads]

    fused = run()
    masks = net.dropout_masks(seed, index, rate, 0.2)
    given = run(masks)
    net.fuse_products = False
    separate = run()
    assert np.any(fused[0] > -1e29)
    for got in (fused, given):
        np.testing.assert_allclose(got[0], separate[0], rtol=1e-4, atol=1e-4)
        for g, e in zip(got[1], separate[1]):
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-4)
    assert not np.allclose(fused[0], net.log_likelihood(xt).numpy())


@pytest.mark.parametrize("routing", ["hard", "hard_unweighted", "max", "sample"])
def test_fused_product_dropout_is_refused_under_hard_routings(routing):
    """The fused op drops products under the soft routings only (the network drops between
    separate layers otherwise): asked for more, it says so instead of routing signals to
    dropped products."""
    from skspn.core.product_sum import product_sum

    net = build("3x3-onehot", seed=31)
    product, layer = net.products[0], net.sums[0]
    x = tf.zeros(tuple(product.resolved.in_shape) + (2, product.in_channels))
    keep = tf.ones(tuple(product.out_shape) + (2, product.out_channels), tf.bool)
    log_w = layer.log_weights()
    with pytest.raises(ValueError, match=f"needs a soft routing, got '{routing}'"):
        product_sum(product, layer, x, log_w, routing, keep=keep)
    out = product_sum(product, layer, x, log_w, "gradient", keep=keep)  # allowed
    assert tuple(out.s.shape) == tuple(product.out_shape) + (2, layer.out_channels)


@pytest.mark.parametrize("routing", ["soft", "hard", "hard_unweighted", "max"])
def test_fused_layer_passes_the_signal_its_input_takes(routing, monkeypatch):
    """``ScaledValues.linear_signal``: a fused layer passes its input the signal of the
    log-values, or of ``s`` itself (that divided by ``s``) where the layer below produced
    the input under a soft routing. Here the same input is given both ways to a fused
    layer of each routing."""
    from skspn.core import products
    from skspn.core.product_sum import product_sum

    monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
    monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    net = build("2x3-onehot-maxdepth", seed=31)
    rng = np.random.default_rng(35)
    x = to_tf(binary_with_evidence(net.spatial_shape, 4, 3, rng))
    weights = net.normalised_weights()
    below = product_sum(net.products[0], net.sums[0], net.leaf_log_prob(x), weights.log[0],
                        "soft", w=weights.linear[0])
    assert below.linear_signal

    def input_signal(linear):
        given = below._replace(linear_signal=linear)
        with tf.GradientTape() as tape:
            tape.watch(given.s)
            out = product_sum(net.products[1], net.sums[1], given, weights.log[1], routing,
                              w=weights.linear[1])
            total = tf.reduce_sum(out.s)
        return tape.gradient(total, given.s).numpy()

    of_log_values = input_signal(False)
    assert np.abs(of_log_values).sum() > 0
    np.testing.assert_allclose(input_signal(True), of_log_values / below.s.numpy(),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ["3x3-onehot", "2x3-classes3"])
def test_top_sum_routes_alike_compiled(case, monkeypatch):
    """Networks over large images (``XLA_MIN_PIXELS``) run the top sum's hard and sampling
    backward pass compiled by XLA (``routed_sum(compiled=True)``): the same choices, draws
    and counts as the TensorFlow ops. Here every image counts as large, and the compiled
    route is swapped for the plain one in the second pass."""
    from skspn.core import network, sums

    monkeypatch.setattr(network, "XLA_MIN_PIXELS", 0)
    compiled_route, calls = sums._compiled_route, []

    def recording(*args):
        calls.append(args[4])  # the routing, at trace time
        return compiled_route(*args)

    rng = np.random.default_rng(33)

    def queries():
        net = build(case, seed=34)
        shape = net.spatial_shape
        x = binary_with_evidence(shape, 5, 4, rng)
        xt, seed = to_tf(x), tf.constant([5, 6], tf.int64)
        out = {}
        for routing in ("max", "sample"):
            out["leaf_" + routing] = net.leaf_signal(xt, routing, seed)[0]
        for routing in ("hard", "hard_unweighted"):
            counts, _ = net.em_counts(xt, routing, seed)
            out.update({f"{routing}_{i}": c for i, c in enumerate(counts)})
        return {k: v.numpy() for k, v in out.items()}

    monkeypatch.setattr(sums, "_compiled_route", recording)
    compiled = queries()
    assert set(calls) == {"max", "sample", "hard", "hard_unweighted"}
    rng = np.random.default_rng(33)
    monkeypatch.setattr(sums, "_compiled_route", sums.route)
    plain = queries()
    for key, value in compiled.items():
        np.testing.assert_array_equal(value, plain[key], err_msg=key)


@pytest.mark.parametrize("shared", [False, True])
def test_factored_sum_equals_sum_of_all_combinations(shared):
    """A sum over a one-hot product of all combinations, taken in two factors
    (``factored_matmul`` / ``factored_soft_route``), gives the value, the signal of each
    factor's log-values and the expected counts of the sum over the written-out product
    ``p[r * A + a] = q[r] * e[a]``."""
    from skspn.core.sums import factored_matmul, factored_soft_route, soft_signals

    rng = np.random.default_rng(40)
    n, b, r, a, c_out = 6, 5, 8, 3, 4
    q = tf.constant(rng.uniform(0.05, 1.0, (n, b, r)), tf.float32)
    e = tf.constant(rng.uniform(0.05, 1.0, (n, b, a)), tf.float32)
    w = tf.constant(rng.dirichlet(np.ones(r * a), size=(1 if shared else n, c_out))
                    .transpose(0, 2, 1), tf.float32)
    g = tf.constant(rng.normal(size=(n, b, c_out)), tf.float32)
    p = tf.reshape(q[..., :, None] * e[..., None, :], [n, b, r * a])
    s_full = tf.matmul(p, tf.broadcast_to(w, [n, r * a, c_out]))
    s, t = factored_matmul(q, e, w)
    np.testing.assert_allclose(s.numpy(), s_full.numpy(), rtol=1e-5)
    u, dlw_full = soft_signals(p, w, g / s_full)
    dp = p * u
    dq, de, dlw = factored_soft_route(q, e, t, w, g / s)
    dp = tf.reshape(dp, [n, b, r, a]).numpy()
    np.testing.assert_allclose(dq.numpy(), dp.sum(axis=3), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(de.numpy(), dp.sum(axis=2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dlw.numpy(), dlw_full.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case, fuse, jit", [
    ("2x3-onehot-maxdepth", True, False),
    ("2x3-onehot-maxdepth-extreme-weights", True, True),
    ("2x3-classes3", False, False),
])
def test_queries_answer_with_the_normalised_weights_given(case, fuse, jit, monkeypatch):
    """A query over many batches normalises the weights once and gives them to every batch
    (``NormalisedWeights``). Given another network's weights, every query answers as that
    network does, compiled or not, with fused layers or apart, and gradients with respect
    to the given log-weights are that network's counts."""
    from skspn.core import products
    from skspn.core.learning import CompiledOps

    monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
    monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    over = dict(FUSED_CASES.get(case, {}))
    weight_scale = over.pop("weight_scale", 1.0)
    over.pop("all_multiply", None)
    name = over.pop("name", case)
    net, other = build(name, seed=31, **over), build(name, seed=31, **over)
    randomize_weights(other, np.random.default_rng(99))  # same leaves, other sums
    for model in (net, other):
        model.fuse_products = fuse
        for layer in model.sums:
            layer.accumulator.assign(layer.accumulator * weight_scale)
    rng = np.random.default_rng(33)
    shape = net.spatial_shape
    x = binary_with_evidence(shape, 4, 4, rng)
    xt, seed = to_tf(x), tf.constant([5, 6], tf.int64)
    index = tf.range(len(x))

    def queries(model, weights=None):
        out = {"ll": model.log_likelihood(xt, weights),
               "max": model.forward(xt, routing="max", weights=weights)[1]}
        if model.n_classes:
            out["joint"] = model.joint_log_likelihood(xt, weights)
        for routing in ("soft", "max", "sample"):
            out["leaf_" + routing] = model.leaf_signal(xt, routing, seed, weights=weights)[0]
        for method in ("marginal", "mpe", "sample"):
            out[method] = model.complete(xt, method, seed, index, weights)
        out["predictive"] = model.predictive(xt, weights)
        return {k: v.numpy() for k, v in out.items()}

    expected = queries(other)
    given = queries(net, other.normalised_weights())
    own = queries(net)
    # Gradients reach the given log-weights as they reach the network's own: the counts.
    weights = other.normalised_weights()
    with tf.GradientTape() as tape:
        tape.watch(weights.log)
        total = tf.reduce_sum(net.log_likelihood(xt, weights))
    given.update({f"counts_{i}": c.numpy()
                  for i, c in enumerate(tape.gradient(total, weights.log))})
    expected.update({f"counts_{i}": c.numpy()
                     for i, c in enumerate(other.em_counts(xt, "soft")[0])})
    ops, other_ops = CompiledOps(net, jit_compile=jit), CompiledOps(other, jit_compile=jit)
    compiled = dict(ll=ops.log_likelihood(xt, other_ops.normalised_weights()).numpy(),
                    marginal=ops.complete(xt, "marginal", weights=other_ops.normalised_weights()
                                          ).numpy())
    assert not np.allclose(own["ll"], expected["ll"])  # the weights matter
    for key, value in list(given.items()) + [("compiled_" + k, v) for k, v in compiled.items()]:
        reference = expected[key.removeprefix("compiled_")]
        if key.endswith(("ll", "joint", "leaf_soft", "marginal", "predictive", "max")) or (
                key.startswith("counts")):
            np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-5, err_msg=key)
        else:  # hard choices: identical
            np.testing.assert_array_equal(value, reference, err_msg=key)


def one_layer_product(spec, shape, crop=None):
    """A ``Product`` of ``spec`` over ``shape`` cells on its own (no full-scope top needed):
    all output cells of each axis, or the crop ``((start, size), (start, size))``."""
    import dataclasses

    from skspn.core.products import Product
    from skspn.core.scopes import ResolvedProduct

    axes = tuple(dataclasses.replace(op, out_start=c[0], out_size=c[1]) if c else
                 dataclasses.replace(op, out_size=op.n_out_unpadded(n))
                 for op, n, c in zip(spec.axes, shape, crop or (None, None)))
    out_shape = tuple(op.out_size for op in axes)
    return Product(ResolvedProduct(spec=dataclasses.replace(spec, axes=axes), in_shape=shape,
                                   out_shape=out_shape), in_channels=3)


# Strided products take their children as unit-stride slices of the input viewed as blocks
# (``Product._blocked``); the reference is the plain strided slices.
@pytest.mark.parametrize("kernel, strides, dilations, padding", [
    ((2, 2), (2, 2), 1, "valid"),           # the classifier's non-overlapping layers
    ((2, 2), (3, 2), 1, "valid"),           # the last block reaches past the input
    ((2, 2), (3, 3), 1, "full"),
    ((1, 2), (1, 2), 1, ((0, 0), (1, 1))),  # a strip: kernel 1 on the first axis
    ((2, 2), (3, 4), (2, 3), "full"),       # dilated offsets inside the stride
])
def test_blocked_children_equal_strided_slices(kernel, strides, dilations, padding,
                                               monkeypatch):
    from skspn.core.products import Product

    shape = (8, 9)
    product = one_layer_product(
        product_spec(kernel, strides=strides, dilations=dilations, padding=padding), shape)
    assert product._blocked()
    x = tf.constant(np.random.default_rng(0).normal(size=shape + (2, 3)), tf.float32)
    blocked = [c.numpy() for c in product._children(x, pad_value=0.5)]
    monkeypatch.setattr(Product, "_blocked", lambda self: False)
    strided = [c.numpy() for c in product._children(x, pad_value=0.5)]
    assert len(blocked) == len(strided) == int(np.prod(kernel))
    for b, s in zip(blocked, strided):
        np.testing.assert_array_equal(b, s)


# Depthwise unit-stride products are taken one axis after the other, run by run, without a
# padded copy of the input (``Product._along_axes``), or, in a layer's own XLA-compiled
# functions, over both axes in one pass (``Product._windowed``); the reference is the sum /
# product of the shifted slices of the padded input, and the transpose of their sum.
@pytest.mark.parametrize("kernel, dilations, padding, crop", [
    ((2, 2), (16, 16), "full", None),        # the inpainting nets' layers
    ((2, 2), (4, 2), "full", ((1, 6), (0, 9))),  # a crop of the output cells
    ((2, 2), (32, 32), "full", ((27, 32), (27, 32))),  # the 28x28 net's final product
    ((3, 2), (3, 1), ((7, 1), (0, 2)), None),  # runs where every offset is padding
    ((1, 3), (1, 2), "valid", None),          # a strip; kernel 1 on one axis
    ((2, 2), (5, 5), ((9, 9), (6, 0)), None),  # offsets that never overlap the input
])
def test_products_along_axes_equal_shifted_slices(kernel, dilations, padding, crop,
                                                  monkeypatch):
    from skspn.core import products
    from skspn.core.products import Product

    shape = (8, 9) if kernel != (2, 2) or dilations[0] < 16 else (28, 28)
    product = one_layer_product(product_spec(kernel, dilations=dilations, padding=padding),
                                shape, crop)
    out_shape = product.out_shape
    assert product._separable()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape + (2, 3)), tf.float32)
    s = tf.constant(rng.uniform(0.1, 1.0, size=shape + (2, 3)), tf.float32)
    m = tf.constant(rng.normal(size=shape + (2, 1)), tf.float32)
    g = tf.constant(rng.normal(size=out_shape + (2, 3)), tf.float32)

    def run():
        return [product._forward(x), *product._scaled_linear_impl(s, m),
                product.transpose([g] * len(product.offsets))]

    one_pass_calls = []
    windowed = Product._windowed
    monkeypatch.setattr(Product, "_windowed", lambda self, *args, **kwargs: (
        one_pass_calls.append(kwargs.get("scale") is not None)
        or windowed(self, *args, **kwargs)))
    along = [t.numpy() for t in run()]
    compiled = [t.numpy() for t in tf.function(run, jit_compile=True, autograph=False)()]
    assert not one_pass_calls  # neither TensorFlow's kernels nor another XLA function
    one_pass = [t.numpy() for t in products._xla_function(run)()]
    # the log-values' sum, and the scaled values' product with its maxima
    assert sorted(one_pass_calls) == [False, False, True]
    monkeypatch.setattr(Product, "_separable", lambda self: False)
    sliced = [t.numpy() for t in run()]
    assert [a.shape for a in along] == [out_shape + (2, 3), out_shape + (2, 3),
                                        out_shape + (2, 1), shape + (2, 3)]
    for a, b, c, d in zip(along, sliced, compiled, one_pass):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(c, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(d, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tiny, multiplies", [
    # (cell, its channels of 1e-12): the others are at least 0.1
    ([((3, 4), [0])], True),  # one tiny child per output: at least 1e-12 * 0.1 ** 3
    # channel 0 of four children, one per offset: 1e-48 underflows
    ([((3, 4), [0]), ((3, 6), [0]), ((5, 4), [0]), ((5, 6), [0])], False),
    # all channels of four children: their maxima are divided out, nothing is small
    ([((3, 4), [0, 1, 2]), ((3, 6), [0, 1, 2]), ((5, 4), [0, 1, 2]), ((5, 6), [0, 1, 2])],
     True),
])
def test_scaled_from_multiplies_only_where_the_product_cannot_underflow(tiny, multiplies):
    """``Product.scaled_from`` multiplies the values ``s``, each child divided by its
    maximum over the channels, when the product of the children's floors (lower bounds of
    ``log(s / max(s))`` per cell and channel) stays above ``LINEAR_MIN_LOG`` everywhere,
    and takes the log-values otherwise: where the product of four values of 1e-12
    underflows, multiplying gives no finite answer."""
    from skspn.core import products

    product = one_layer_product(product_spec((2, 2), dilations=(2, 2), padding="full"), (8, 9))
    rng = np.random.default_rng(1)
    s = rng.uniform(0.1, 1.0, size=(8, 9, 2, 3))
    for cell, channels in tiny:
        s[cell][..., channels] = 1e-12
    # a lower bound of log(s / max(s)) per cell and channel
    floor = np.log(s.min(axis=2, keepdims=True) / s.max(axis=(2, 3), keepdims=True))
    floor = tf.constant(floor, tf.float32)
    s = tf.constant(s, tf.float32)
    m = tf.constant(rng.normal(size=(8, 9, 2, 1)), tf.float32)
    p_log, m_log = (t.numpy() for t in product._scaled_log_impl(s, m))
    p_lin, m_lin = (t.numpy() for t in product._scaled_linear_impl(s, m))
    # A bound of one number per layer (n times its smallest value) would refuse the first
    # case too, which the bound per cell and channel lets multiply.
    per_layer_refuses = 4 * float(tf.reduce_min(floor)) < products.LINEAR_MIN_LOG
    assert per_layer_refuses == (tiny[0][1] == [0])
    assert bool(product.multiplies_scaled(floor)) == multiplies
    p, m_out = (t.numpy() for t in product.scaled_from(s, m, floor))
    with np.errstate(divide="ignore"):  # log(0): an underflowed product, or p_log's
        assert np.all(np.isfinite(np.log(p_lin))) == multiplies
        log_values, log_values_ref = np.log(p) + m_out, np.log(p_log) + m_log
    # the same log-values; the log path's p has maximum 1, the multiplied one at most 1
    np.testing.assert_allclose(log_values, log_values_ref, rtol=1e-5, atol=1e-4)
    assert np.all(p <= 1 + 1e-6) and np.allclose(p_log.max(axis=-1), 1)  # up to rounding
    taken = p_lin if multiplies else p_log
    np.testing.assert_array_equal(p, taken)  # the path taken, bit for bit
    # With the sum after the product in the same (compiled) pass, for the value-only
    # queries: the same rule, and the path taken's p contracted with the weights (up to
    # the compiled pass's rounding; the other path's p differs in the third digit).
    n_out = int(np.prod(product.out_shape))
    w = tf.constant(rng.dirichlet(np.ones(3), size=(n_out, 4)).transpose(0, 2, 1), tf.float32)
    for weights in (w, w[:1]):  # one matrix per cell, or one shared by all cells
        s_sum, m_sum = (t.numpy() for t in product.summed_from(s, m, floor, weights))
        np.testing.assert_allclose(m_sum, m_out, rtol=1e-6, atol=1e-6)
        expect = np.einsum("nbi,nio->nbo", taken.reshape(n_out, 2, 3),
                           np.broadcast_to(weights.numpy(), w.shape))
        np.testing.assert_allclose(s_sum, expect, rtol=1e-5, atol=1e-30)
    # The same rule where the product's log-values are wanted (a last product, no sum).
    from_logs = product._forward_from_logs(s, m).numpy()
    multiplied = product._forward_multiplied(s, m).numpy()
    assert np.all(np.isfinite(multiplied)) == multiplies
    out = product.forward_from_scaled(s, m, floor).numpy()
    np.testing.assert_allclose(out, from_logs, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(out, multiplied if multiplies else from_logs)


@pytest.mark.parametrize("tiny_children, multiplies", [(0, True), (4, False)])
def test_scaled_from_multiplies_by_the_values_where_the_floors_are_loose(tiny_children,
                                                                         multiplies):
    """Where the weights' floors refuse (a fitted network's smoothed counts of children
    its sums rarely chose), the batch's own values decide: their ratios of smallest to
    largest value per child bound the multiplied product. Values in [0.1, 1] multiply
    under a floor of -30 per child (4 x -30 < LINEAR_MIN_LOG); a channel of 1e-12 in each
    of four children of one output does not."""
    from skspn.core import products

    product = one_layer_product(product_spec((2, 2), dilations=(2, 2), padding="full"), (8, 9))
    rng = np.random.default_rng(2)
    s = rng.uniform(0.1, 1.0, size=(8, 9, 2, 3))
    for cell in [(3, 4), (3, 6), (5, 4), (5, 6)][:tiny_children]:
        s[cell][..., 0] = 1e-12
    s = tf.constant(s, tf.float32)
    m = tf.constant(rng.normal(size=(8, 9, 2, 1)), tf.float32)
    loose = tf.fill([1, 1, 1, 3], -30.0)  # a valid lower bound of log(s / max(s))
    assert 4 * -30.0 < products.LINEAR_MIN_LOG and not bool(product.multiplies_scaled(loose))
    assert bool(product.multiplies_values(s)) == multiplies
    assert bool(product.multiplies_values(s, compiled=True)) == multiplies
    p, m_out = (t.numpy() for t in product.scaled_from(s, m, loose))
    linear, from_logs = product._scaled_linear_impl(s, m), product._scaled_log_impl(s, m)
    np.testing.assert_array_equal(p, (linear if multiplies else from_logs)[0].numpy())
    with np.errstate(divide="ignore"):  # log(0): p_log's underflowed entries
        np.testing.assert_allclose(np.log(p) + m_out,
                                   np.log(from_logs[0].numpy()) + from_logs[1].numpy(),
                                   rtol=1e-5, atol=1e-4)
    out = product.forward_from_scaled(s, m, loose).numpy()
    taken = product._forward_multiplied if multiplies else product._forward_from_logs
    np.testing.assert_array_equal(out, taken(s, m).numpy())


@pytest.mark.parametrize("leaf_kind", ["normal", "categorical"])
def test_compiled_leaf_log_prob_equals_plain(leaf_kind, monkeypatch):
    """Images of at least ``XLA_MIN_PIXELS`` pixels compute the leaf log-probs as one
    XLA-compiled function; values and gradients (leaf parameters included) are those of
    the plain TensorFlow function. Here every image counts as large."""
    from skspn.core import network

    rng = np.random.default_rng(5)
    shape = (3, 4)
    if leaf_kind == "normal":
        leaf = NormalLeaf(rng.normal(size=shape + (1, 3)),
                          scale=rng.uniform(0.5, 2, shape + (1, 3)), trainable=True)
        x = rng.normal(size=(6,) + shape)
    else:
        leaf = CategoricalLeaf(rng.normal(size=shape + (1, 3, 4)))
        x = rng.integers(0, 4, size=(6,) + shape).astype(np.float64)
    x[rng.random(x.shape) < 0.3] = np.nan
    products = plan(shape, "one_hot")
    net = DGCSPN(shape, leaf, products, [3] * (len(products) - 1), seed=0)
    xt = to_tf(x)

    def run():
        with tf.GradientTape() as tape:
            lp = net.leaf_log_prob(xt)
            ll = net.log_likelihood(xt)
            loss = tf.reduce_sum(ll) + 0.1 * tf.reduce_sum(lp)
        leaf_grads, grads = tape.gradient(loss, [leaf.trainable_variables,
                                                 net.trainable_variables])
        return [lp.numpy(), ll.numpy()] + [g.numpy() for g in leaf_grads + grads]

    monkeypatch.setattr(network, "XLA_MIN_PIXELS", 0)
    compiled = run()
    assert net._leaf_log_prob_fn.experimental_get_tracing_count() >= 1
    monkeypatch.setattr(network, "XLA_MIN_PIXELS", 10 ** 9)
    plain = run()
    assert len(leaf.trainable_variables) > 0
    assert all(np.any(g != 0) for g in compiled[2:2 + len(leaf.trainable_variables)])
    for a, b in zip(compiled, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_whole_step_xla_leaves_leaves_and_products_to_its_own_compilation(jit, monkeypatch):
    """A step compiled by XLA as a whole computes the leaf log-probs and the products of
    fused layers inside its own compilation: the compiled leaf function nested in an XLA
    gradient step made the MNIST classifier's Adam step 30x slower, and the choice between
    the compiled multiplying and log-value products made the inpainting net's compiled
    forward pass slower. Without step-level XLA, large layers use them."""
    from skspn.core import network, products
    from skspn.core.learning import CompiledOps, GradientLearner

    monkeypatch.setattr(network, "XLA_MIN_PIXELS", 0)  # every image counts as large
    monkeypatch.setattr(products, "XLA_MIN_PIXELS", 0)
    monkeypatch.setattr(products, "XLA_MIN_CELLS", 0)
    net = bernoulli_net((2, 3), plan((2, 3), depth="max"), n_classes=2)
    x = (np.random.default_rng(7).random((8, 2, 3, 1)) < 0.5).astype(np.float32)
    y = np.arange(8, dtype=np.int32) % 2
    GradientLearner(net, "ce", 1e-2, 0.0, 0.0, jit_compile=jit).step(
        x, np.ones(8, np.float32), np.array([1, 2], np.int64), y)
    CompiledOps(net, jit_compile=jit).log_likelihood(x)
    traces = net._leaf_log_prob_fn.experimental_get_tracing_count()
    assert traces == (0 if jit else 1)
    traces = [p._scaled_linear_fn.experimental_get_tracing_count() for p in net.products[1:3]]
    assert traces == ([0, 0] if jit else [1, 1])


def test_which_layers_compile():
    """In networks over images of at least XLA_MIN_PIXELS pixels, layers of at least
    XLA_MIN_CELLS cells compile (the MNIST classifier's 7 x 7 to 14 x 14 layers after two
    stride-2 products: imputation 15-30 % faster than compiling from 256 cells
    only); over small images (8 x 8 digits, most short fits) nothing does."""
    from skspn.core import products

    def compiled(shape, n_no):
        net = bernoulli_net(shape, plan(shape, "depthwise", n_no=n_no))
        return [(int(np.prod(p.out_shape)), p.compile_large) for p in net.products]

    # 32 x 32 with two stride-2 products: 8 x 8 = 64-cell layers and up compile.
    layers = compiled((32, 32), 2)
    assert all(flag == (cells >= products.XLA_MIN_CELLS) for cells, flag in layers)
    assert any(flag and cells < 256 for cells, flag in layers)
    assert not any(flag for _, flag in compiled((8, 8), 0))  # 81-cell layers, 64 pixels


@pytest.mark.slow
def test_gradient_registrations_are_released_safely_across_threads():
    import functools
    import sys
    import threading

    from skspn.core import learning

    # The registrations of a trace are told apart by comparing TensorFlow's gradient
    # registry before and after it. Unserialised, a trace in one thread booked another
    # thread's registration, and released it with its own owner while the other trace
    # still needed it (LookupError: No gradient defined for operation 'IdentityN'), or
    # failed iterating the registry while it changed.
    class Owner:
        pass

    def traced(x):
        @tf.custom_gradient
        def double(x):
            return 2.0 * x, lambda g: 2.0 * g

        y = double(x)
        for _ in range(100):  # time between registering and differentiating
            y = y + 1.0
        return tf.gradients(y, x)[0]

    errors = []

    def work():
        for _ in range(60):
            # The owner lives as long as the function (as a network as long as its ops).
            fn = tf.function(functools.partial(learning._tracing_for, Owner(), traced),
                             autograph=False)
            try:
                fn.get_concrete_function(tf.TensorSpec([None], tf.float32))
            except Exception as exc:
                errors.append(exc)
            del fn

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]


@pytest.mark.parametrize("where", ["plain", "plain-xla", "mirrored", "mirrored-in-scope"])
def test_adam_update_is_adam(where, monkeypatch, request):
    """``Adam.apply`` is Adam with bias correction and epsilon outside the square root:
    three steps against numpy. Plain variables take one fused kernel each; a
    ``MirroredStrategy``'s variables take the formula, which updates every replica's copy
    whether or not the step runs in the strategy's scope. A variable that gets no gradient
    is left alone."""
    import contextlib

    from skspn.core.learning import Adam

    kernel_calls = []
    fused = tf.raw_ops.ResourceApplyAdam
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyAdam",
                        lambda **kw: kernel_calls.append(1) or fused(**kw))
    rng = np.random.default_rng(8)
    init = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)]
    grads = [0.1 * rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3)]
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 0.05  # a large epsilon: its place matters
    expect, m, v = init[0].astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        expect = expect - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)

    strategy = request.getfixturevalue("strategy") if where.startswith("mirrored") else None
    with strategy.scope() if strategy else contextlib.nullcontext():
        variables = [tf.Variable(x) for x in init]
        adam = Adam(variables, lr, epsilon=eps)
    step = tf.function(lambda g: adam.apply([g, None]), jit_compile=where == "plain-xla")
    with strategy.scope() if where == "mirrored-in-scope" else contextlib.nullcontext():
        for g in grads:
            step(tf.constant(g))
    copies = variables[0].values if strategy else [variables[0]]
    assert len(copies) == (2 if strategy else 1)
    for copy in copies:
        np.testing.assert_allclose(copy.numpy(), expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(variables[1].numpy(), init[1])
    assert int(adam.iterations.numpy()) == 3
    assert bool(kernel_calls) == (strategy is None)


@pytest.mark.parametrize("where", ["plain", "plain-xla", "mirrored"])
@pytest.mark.parametrize("objective", ["nll", "ce"])
def test_gradient_step_is_adam_on_the_weighted_mean_loss(objective, where, request):
    """One ``GradientLearner`` step is Adam on the gradient of the sample-weighted mean
    loss, computed here by autodiff of ``log_softmax`` of the accumulators (not through
    ``SpatialSum.normalised``); under a ``MirroredStrategy`` each replica differentiates
    its half of the batch and the halves add up. A large epsilon makes the step depend on
    the gradient's scale, which Adam otherwise almost cancels."""
    import contextlib

    from skspn.core.learning import GradientLearner

    name = "1x3-depthwise-stride2-classes" if objective == "ce" else "2x2-depthwise-k3"
    strategy = request.getfixturevalue("strategy") if where == "mirrored" else None
    with strategy.scope() if strategy else contextlib.nullcontext():
        net = em_net(name, seed=30)
        learner = GradientLearner(net, objective, 0.05, jit_compile=where == "plain-xla",
                                  strategy=strategy)
    learner.optimizer.epsilon = 0.5
    rng = np.random.default_rng(31)
    shape = net.spatial_shape
    x = binary_with_evidence(shape, 3, 3, rng)
    weight = rng.uniform(0.2, 3.0, size=len(x)).astype(np.float32)
    y = rng.integers(0, 2, size=len(x)).astype(np.int32)

    before = [v.numpy().astype(np.float64) for v in learner.variables]
    with tf.GradientTape() as tape:
        log_weights = [tf.nn.log_softmax(layer.accumulator, axis=1)
                       for layer in net.weight_layers]
        top, root = net.forward_from_leaves(net.leaf_log_prob(to_tf(x)), log_weights)
        if objective == "nll":
            per_sample = -root
        else:
            joint = top + log_weights[-1][0, :, 0]
            per_sample = -tf.gather(tf.nn.log_softmax(joint, axis=-1), y, axis=1,
                                    batch_dims=1)
        loss = tf.reduce_sum(weight * per_sample) / weight.sum()
    grads = tape.gradient(loss, learner.variables)
    assert all(g is not None for g in grads)

    returned = learner.step(to_tf(x), weight, np.array([1, 2], np.int64), y)
    np.testing.assert_allclose(returned, loss.numpy(), rtol=1e-5)
    opt = learner.optimizer
    for var, start, g in zip(learner.variables, before, grads):
        g = g.numpy().astype(np.float64)
        m, v = (1 - opt.beta_1) * g, (1 - opt.beta_2) * g * g
        lr = 0.05 * np.sqrt(1 - opt.beta_2) / (1 - opt.beta_1)
        expect_change = -lr * m / (np.sqrt(v) + opt.epsilon)
        np.testing.assert_allclose(var.numpy() - start, expect_change, rtol=2e-3, atol=2e-7,
                                   err_msg=var.name)


@pytest.mark.parametrize("by_child", [True, False])
def test_unweighted_choice_over_combinations_is_uniform_over_the_tied_ones(by_child):
    """Unweighted (USI) choices of a sum over a one-hot product of all combinations are
    made child by child (``sums.unweighted_choice_by_child``): the chosen combination is a
    largest one, and exact ties (here 3 x 2 tied combinations of 4 x 4 channels) are broken
    uniformly and independently per sample, as the single draw over all 12 combinations
    (``combinations=None``) does."""
    from skspn.core import keyed_random
    from skspn.core.sums import choose

    n_samples = 6000
    first = np.array([0.5, 0.5, -1.0, 0.5])  # channels 0, 1 and 3 tie
    second = np.array([2.0, 0.3, 2.0, 1.0])  # channels 0 and 2 tie
    scores = (first[:, None] + second[None, :]).reshape(1, 1, 16)  # first child major
    scores = tf.constant(np.broadcast_to(scores, (1, n_samples, 16)), tf.float32)
    g = tf.ones([1, n_samples, 2])
    keys = keyed_random.sample_keys(tf.constant([4, 2], tf.int64), tf.range(n_samples))
    sel, signal = choose(scores, tf.zeros([1, 16, 2]), g, keys, "hard_unweighted",
                         (4, 2) if by_child else None)
    sel = sel.numpy()[0]
    np.testing.assert_array_equal(signal.numpy(), 2.0)
    tied = [a * 4 + b for a in (0, 1, 3) for b in (0, 2)]
    assert set(np.unique(sel)) == set(tied)
    counts = np.bincount(sel, minlength=16)[tied]
    assert chisquare(counts).pvalue > 1e-3, counts
    # the two children's channels are drawn independently
    from scipy.stats import chi2_contingency

    table = np.zeros((3, 2))
    np.add.at(table, (np.searchsorted([0, 1, 3], sel // 4), sel % 4 // 2), 1)
    assert chi2_contingency(table).pvalue > 1e-3, table


def _checked_net(**over):
    args = dict(shape=(4, 4), leaf=NormalLeaf(np.zeros((4, 4, 1, 2))),
                products=plan((4, 4), "depthwise"), sum_channels=[2], n_classes=None)
    args.update(over)
    return DGCSPN(args["shape"], args["leaf"], args["products"], args["sum_channels"],
                  n_classes=args["n_classes"], log_space=args.get("log_space", True))


@pytest.mark.parametrize("call, message", [
    (lambda: _checked_net(leaf=NormalLeaf(np.zeros((5, 5, 1, 2)))), r"cover \(5, 5\) cells"),
    (lambda: NormalLeaf(np.zeros(4)), r"loc must have shape \(H, W, n_colors, K\)"),
    (lambda: BernoulliLeaf(np.zeros((4, 4, 2))), r"logits must have shape"),
    (lambda: NormalLeaf(np.zeros((4, 4, 1, 2)), min_scale=0.0), r"min_scale must be positive"),
    (lambda: NormalLeaf(np.zeros((4, 4, 1, 2)), scale=-1.0), r"scale must be positive"),
    (lambda: _checked_net(sum_channels=[2.7]), r"sum_channels must hold whole numbers"),
    (lambda: _checked_net(n_classes=0), r"n_classes must be None or a positive integer"),
    (lambda: _checked_net().log_likelihood(tf.zeros((2, 4, 4, 3))), r"\[B, 4, 4, 1\]"),
    (lambda: _checked_net().complete(tf.zeros((2, 4, 4, 1)), method="best"), r"method must"),
    (lambda: EMLearner(_checked_net(log_space=False), "foo"), r"learning must be one of"),
    (lambda: GradientLearner(_checked_net(log_space=False)), r"log_space=True"),
    (lambda: GradientLearner(_checked_net(), product_dropout=1.5), r"product_dropout"),
    (lambda: GradientLearner(_checked_net(), learning_rate=-1), r"learning_rate must be"),
    (lambda: GradientLearner(_checked_net(n_classes=3), "ce").step(
        np.zeros((2, 4, 4, 1), np.float32), np.ones(2, np.float32), np.zeros(2, np.int64)),
     r"needs the class indices y"),
    (lambda: CompiledOps(_checked_net()).predictive(np.zeros((2, 4, 4, 1), np.float32)),
     r"discrete"),
    (lambda: CompiledOps(_checked_net()).joint_log_likelihood(
        np.zeros((2, 4, 4, 1), np.float32)), r"class sums"),
    (lambda: CompiledOps(_checked_net()).complete(np.zeros((2, 4, 4, 1), np.float32), "best"),
     r"method must be one of"),
])
def test_core_arguments_are_checked(call, message):
    # The public core refused these late (TensorFlow or KeyError / AttributeError), or not
    # at all: a wrong colour count broadcast silently, min_scale=0 made every value
    # equally likely, 'ce' without y trained every sample as class 0.
    with pytest.raises(ValueError, match=message):
        call()
