"""DGCSPNDensityEstimator and DGCSPNImputer: learning, exact likelihoods, completions."""

import itertools
import logging
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse
from scipy.special import logsumexp
from sklearn.datasets import load_digits
from sklearn.impute import SimpleImputer

from skspn import DGCSPNDensityEstimator, DGCSPNImputer


@pytest.fixture(scope="module")
def digits_split():
    X = load_digits().data
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    return X[idx[:1400]], X[idx[1400:]]


def _bottom_half_missing(X):
    X = X.copy()
    X[:, X.shape[1] // 2:] = np.nan
    return X


@pytest.mark.parametrize("learning", ["hard_em_unweighted", "hard_em", "soft_em", "gradient"])
def test_training_improves_log_likelihood(digits_split, learning):
    X = digits_split[0][:400]
    est = DGCSPNDensityEstimator(learning=learning, max_epochs=4, tol=None, sum_channels=8,
                                 random_state=0).fit(X)
    hist = np.array(est.history_)
    assert len(hist) == 4 and est.n_iter_ == 4
    assert hist[-1] > hist[0] + 0.5
    if learning != "gradient":
        # EM with the batch M-step: never worse from one epoch to the next.
        assert np.all(np.diff(hist) > -1e-3), hist


def test_imputer_beats_mean_imputation_on_digits(digits_split):
    X_train, X_test = digits_split
    X_missing = _bottom_half_missing(X_test)
    hidden = np.isnan(X_missing)
    imp = DGCSPNImputer(depth=4, leaf_scale=0.5, max_epochs=8, random_state=0).fit(X_train)
    ours = np.mean((imp.transform(X_missing)[hidden] - X_test[hidden]) ** 2)
    mean = np.mean((SimpleImputer().fit(X_train).transform(X_missing)[hidden]
                    - X_test[hidden]) ** 2)
    assert ours < 0.8 * mean, (ours, mean)


@pytest.fixture(scope="module")
def fitted_density(digits_split):
    return DGCSPNDensityEstimator(max_epochs=2, sum_channels=8, random_state=0).fit(
        digits_split[0][:300])


@pytest.mark.parametrize("method", ["marginal", "mpe", "sample"])
def test_impute_keeps_observed_values(fitted_density, digits_split, method):
    X = digits_split[1][:20].copy()
    X[np.random.default_rng(1).random(X.shape) < 0.3] = np.nan
    out = fitted_density.impute(X, method=method, random_state=0)
    observed = ~np.isnan(X)
    assert np.array_equal(out[observed], X[observed])  # bit for bit
    assert np.isfinite(out).all()


def test_impute_complete_input_unchanged(fitted_density, digits_split):
    X = digits_split[1][:10] + 0.123456789  # values no float32 round trip keeps
    assert np.array_equal(fitted_density.impute(X), X)


def test_all_missing_row(fitted_density):
    X = np.full((2, 64), np.nan)
    assert np.allclose(fitted_density.score_samples(X), 0.0, atol=1e-4)
    out = fitted_density.impute(X)
    assert np.isfinite(out).all()
    # The all-missing completion is the model's mean image: inside the data range.
    assert out.min() > -2 and out.max() < 18


def test_far_outliers_saturate_at_a_finite_log_density(fitted_density, digits_split):
    # One entry far out (either side, up to float32's largest value after scaling): the
    # float32 network caps its distance at 1e13 leaf widths (the docstring's -5e25).
    X = np.repeat(digits_split[1][:1], 3, axis=0).astype(np.float64)
    X[:, 5] = [1e30, 3e38, -1e30]
    scores = fitted_density.score_samples(X)
    assert np.isfinite(scores).all()
    assert scores[0] == scores[1] == scores[2]
    np.testing.assert_allclose(scores, -5e25, rtol=1e-3)


def test_marginalisation_changes_score(fitted_density, digits_split):
    X = digits_split[1][:5].copy()
    full = fitted_density.score_samples(X)
    X[:, :32] = np.nan
    half = fitted_density.score_samples(X)
    assert np.all(half > full)  # a marginal is more probable than the joint


@pytest.mark.parametrize("a, b", [(3.0, 5.0), (1e-10, 0.0), (1e-9, 1e-7), (1e12, 0.0)])
def test_feature_standardisation_is_a_density_in_x_units(digits_split, a, b):
    """Scaling X by a changes every log-density by exactly -(varying features) * log a, for
    data in tiny units too (an absolute 'constant feature' threshold once made them wrong)."""
    X = digits_split[0][:200]
    est1 = DGCSPNDensityEstimator(max_epochs=2, sum_channels=4, random_state=0).fit(X)
    est2 = DGCSPNDensityEstimator(max_epochs=2, sum_channels=4, random_state=0).fit(a * X + b)
    s1 = est1.score_samples(X[:10])
    s2 = est2.score_samples(a * X[:10] + b)
    # Constant features get scale 1 (not a), so only varying features carry the Jacobian.
    n_varying = int(np.sum(X.std(axis=0) > 0))
    assert np.allclose(s2, s1 - n_varying * np.log(a), atol=1e-3)


def test_one_dimensional_density_integrates_to_one():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-3, 1, 300), rng.normal(4, 0.5, 200)])[:, None]
    est = DGCSPNDensityEstimator(learning="soft_em", n_components=6, max_epochs=10,
                                 random_state=0).fit(X)
    grid = np.linspace(-15, 15, 6001)[:, None]
    density = np.exp(est.score_samples(grid))
    assert np.trapezoid(density, grid[:, 0]) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("shape", [(2, 3), (3, 3)])
def test_bernoulli_density_sums_to_one(shape):
    n = shape[0] * shape[1]
    rng = np.random.default_rng(0)
    X = (rng.random((200, n)) < 0.4).astype(float)
    est = DGCSPNDensityEstimator(leaf="bernoulli", image_shape=shape, n_components=2,
                                 sum_channels=3, learning="soft_em", max_epochs=3,
                                 random_state=0).fit(X)
    states = np.array(list(itertools.product([0.0, 1.0], repeat=n)))
    assert np.exp(est.score_samples(states)).sum() == pytest.approx(1.0, abs=1e-4)


def test_categorical_leaf():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, size=(100, 4)).astype(float)
    est = DGCSPNDensityEstimator(leaf="categorical", n_components=3, sum_channels=3,
                                 max_epochs=2, learning="soft_em", random_state=0).fit(X)
    assert est.n_categories_ == 3
    states = np.array(list(itertools.product([0.0, 1.0, 2.0], repeat=4)))
    assert np.exp(est.score_samples(states)).sum() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="category 5"):
        est.score_samples(np.full((1, 4), 5.0))
    with pytest.raises(ValueError, match="integer category"):
        DGCSPNDensityEstimator(leaf="categorical").fit(X + 0.5)
    # Raw identifiers as codes: refused up front (a code of 10**6 ran out of memory).
    X_ids = X.copy()
    X_ids[0, 0] = 10**6
    with pytest.raises(ValueError, match="up to 256 categories; X holds code 1000000"):
        DGCSPNDensityEstimator(leaf="categorical").fit(X_ids)


@pytest.mark.parametrize("n_networks", [1, 2])
def test_declared_categories(n_networks):
    small = dict(max_epochs=1, sum_channels=4, random_state=0)
    rng = np.random.RandomState(0)
    X = rng.randint(0, 3, size=(100, 4)).astype(float)
    rare = X[:5].copy()
    rare[0, 0] = 3  # a code the first batch of the stream does not hold
    inferred = DGCSPNImputer(leaf="categorical", n_networks=n_networks, **small).partial_fit(X)
    with pytest.raises(ValueError, match="categories 0..2 .*declare all codes with "
                                         "n_categories"):
        inferred.partial_fit(rare)
    declared = DGCSPNImputer(leaf="categorical", n_categories=4, n_networks=n_networks,
                             **small).partial_fit(X)
    assert declared.n_categories_ == 4
    declared.partial_fit(rare)
    missing = rare.copy()
    missing[:, 1:] = np.nan
    assert set(np.unique(declared.transform(missing))) <= {0.0, 1.0, 2.0, 3.0}
    # A code beyond the declared ones, and a changed count for training on, are refused.
    with pytest.raises(ValueError, match="X holds category 3, but n_categories=3"):
        DGCSPNImputer(leaf="categorical", n_categories=3, **small).fit(rare)
    with pytest.raises(ValueError, match="n_categories changed by set_params"):
        declared.set_params(n_categories=5).partial_fit(X)
    declared.set_params(n_categories=None).partial_fit(X)  # None: the fitted count
    # The unseen code is a proper category of a normalised distribution.
    est = DGCSPNDensityEstimator(leaf="categorical", n_categories=4, image_shape=(1, 3),
                                 **small).fit(X[:, :3])
    states = np.array(list(itertools.product(range(4), repeat=3)), dtype=float)
    probs = np.exp(est.score_samples(states))
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert probs[(states == 3).any(axis=1)].sum() > 0


def test_categorical_leaves_cover_more_categories_than_components():
    # EM keeps the leaves fixed, so every category needs a component that makes it
    # probable: codes 0..7 with 4 components once kept codes 4..7 at 1.4 % each and never
    # imputed them.
    rng = np.random.RandomState(0)
    a = rng.randint(0, 8, 400)
    X = np.column_stack([a, (a + rng.randint(0, 2, 400)) % 8, 7 - a]).astype(float)
    est = DGCSPNDensityEstimator(leaf="categorical", n_components=4, max_epochs=5,
                                 random_state=0).fit(X)
    marginal = np.exp(est.score_samples(
        np.column_stack([np.arange(8.0), np.full(8, np.nan), np.full(8, np.nan)])))
    assert marginal.sum() == pytest.approx(1.0, abs=1e-4)
    assert marginal.min() > 0.08  # the data's marginal is 1/8 each
    X_missing = X.copy()
    X_missing[:, 0] = np.nan  # column 0 is 7 - column 2: recoverable
    completed = est.impute(X_missing)[:, 0]
    assert np.mean(completed == X[:, 0]) > 0.5


def test_single_bernoulli_component_is_each_pixels_frequency():
    # One component per pixel: nothing to mix, so the model is the independent-pixel
    # model of the training frequencies (it once stayed at p = 0.5, ignoring the data).
    rng = np.random.default_rng(0)
    X = (rng.random((300, 9)) < np.linspace(0.1, 0.9, 9)).astype(float)
    est = DGCSPNDensityEstimator(leaf="bernoulli", n_components=1, max_epochs=2,
                                 random_state=0).fit(X)
    p = (X.sum(axis=0) + 1) / (len(X) + 2)  # add-one smoothed
    independent = (X * np.log(p) + (1 - X) * np.log(1 - p)).sum(axis=1)
    assert np.allclose(est.score_samples(X), independent, atol=1e-4)


def test_kernel_per_axis():
    # (height, width) kernels: a 2x6 image with 2x3 products (a square kernel of 3 does
    # not fit its height). The density over all 2**12 binary images sums to 1.
    rng = np.random.default_rng(0)
    X = (rng.random((200, 2, 6)) < 0.4).astype(float)
    est = DGCSPNDensityEstimator(leaf="bernoulli", kernel_size=(2, 3), n_components=2,
                                 sum_channels=3, max_epochs=2, random_state=0).fit(X)
    assert tuple(op.kernel for op in est._network.products[0].axes) == (2, 3)
    states = np.array(list(itertools.product([0.0, 1.0], repeat=12))).reshape(-1, 2, 6)
    assert np.exp(est.score_samples(states)).sum() == pytest.approx(1.0, abs=1e-4)


def test_bernoulli_rejects_non_binary():
    with pytest.raises(ValueError, match="only 0, 1"):
        DGCSPNDensityEstimator(leaf="bernoulli").fit(np.full((5, 4), 2.0))


def test_sampling(fitted_density):
    samples = fitted_density.sample(50, random_state=0)
    assert samples.shape == (50, 64) and np.isfinite(samples).all()
    again = fitted_density.sample(50, random_state=0)
    assert np.array_equal(samples, again)
    other = fitted_density.sample(50, random_state=1)
    assert not np.array_equal(samples, other)
    # Samples follow the data's per-pixel means, not noise around zero.
    assert abs(samples.mean() - 4.9) < 1.5
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match="n_samples must be a positive integer"):
            fitted_density.sample(bad)


def test_draws_do_not_repeat_across_batches_nor_depend_on_batching(fitted_density,
                                                                   digits_split):
    """Random draws are keyed by each row's index in X: rows of different batches are
    independent (an earlier version reused one batch's draws for every batch), and the
    batch size used for inference does not change them."""
    est = fitted_density  # batch_size=128
    samples = est.sample(300, random_state=0)
    assert len(np.unique(samples.round(6), axis=0)) == 300
    X = digits_split[1][:300].copy()
    X[:, 32:] = np.nan
    completed = est.impute(X, method="sample", random_state=0)
    assert not np.allclose(completed[0, 32:], completed[128, 32:])
    small_batches = pickle.loads(pickle.dumps(est)).set_params(batch_size=32)
    np.testing.assert_allclose(small_batches.sample(300, random_state=0), samples, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(small_batches.impute(X, method="sample", random_state=0),
                               completed, rtol=1e-5, atol=1e-5)


def test_training_on_incomplete_data(digits_split):
    X = digits_split[0][:300].copy()
    X[np.random.default_rng(0).random(X.shape) < 0.3] = np.nan
    est = DGCSPNDensityEstimator(max_epochs=2, sum_channels=4, random_state=0).fit(X)
    assert np.isfinite(est.history_).all()
    assert np.isfinite(est.score_samples(X)).all()


def test_partial_fit_stream(digits_split):
    X = digits_split[0][:600]
    est = DGCSPNDensityEstimator(sum_channels=4, random_state=0)
    for chunk in np.array_split(X, 6):
        est.partial_fit(chunk)
    assert est.n_iter_ == 6 and len(est.history_) == 6
    assert est.history_[-1] > est.history_[0]
    assert np.isfinite(est.score(X))


@pytest.mark.parametrize("Estimator", [DGCSPNDensityEstimator, DGCSPNImputer])
def test_a_small_first_partial_fit_batch_warns(digits_split, Estimator):
    """The first batch fixes the leaf components and the scaling for the whole stream: a
    1-row start ruined the model silently. 10 rows per component is the floor."""
    X = digits_split[0][:200]
    est = Estimator(sum_channels=4, n_components=2, random_state=0)
    with pytest.warns(UserWarning, match="first batch has 19 rows.*at least 20"):
        est.partial_fit(X[:19])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later batches, a large first batch, fit: quiet
        est.partial_fit(X[19:22])
        Estimator(sum_channels=4, n_components=2, random_state=0).partial_fit(X[:20])
        Estimator(max_epochs=1, sum_channels=4, n_components=2, random_state=0).fit(X[:5])


def test_image_arrays_accepted(digits_split):
    X = digits_split[0][:100]
    est = DGCSPNDensityEstimator(max_epochs=1, sum_channels=4, random_state=0)
    est.fit(X.reshape(-1, 8, 8))
    assert est.image_shape_ == (8, 8, 1) and est.n_features_in_ == 64
    assert np.allclose(est.score_samples(X.reshape(-1, 8, 8)), est.score_samples(X))
    X3 = X.reshape(-1, 8, 8).copy()
    X3[:, 4:] = np.nan
    assert est.impute(X3).shape == (100, 8, 8)


def test_image_shape_inference():
    X = np.random.default_rng(0).normal(size=(20, 12))
    est = DGCSPNDensityEstimator(max_epochs=1, sum_channels=2, random_state=0).fit(X)
    assert est.image_shape_ == (1, 12, 1)
    est = DGCSPNDensityEstimator(max_epochs=1, sum_channels=2, image_shape=(3, 4),
                                 random_state=0).fit(X)
    assert est.image_shape_ == (3, 4, 1)


def test_rgb_images():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4, 4, 3))
    est = DGCSPNDensityEstimator(max_epochs=1, sum_channels=3, random_state=0).fit(X)
    assert est.image_shape_ == (4, 4, 3)
    X_missing = X[:3].copy()
    X_missing[:, :, :, 1] = np.nan
    full, part = est.score_samples(X[:3]), est.score_samples(X_missing)
    assert np.all(np.isfinite(full)) and np.all(part > full)
    assert np.allclose(est.score_samples(np.full((1, 4, 4, 3), np.nan)), 0.0, atol=1e-4)


@pytest.mark.filterwarnings("ignore:partial_fit's first batch")  # a 10-row stream, on purpose
def test_imputer_missing_values_placeholder(digits_split):
    X_train, X_test = digits_split[0][:300], digits_split[1][:10]
    X = X_test.copy()
    X[:, 40:] = -1
    imp = DGCSPNImputer(missing_values=-1, max_epochs=1, sum_channels=4, random_state=0)
    out = imp.fit(X_train).transform(X)
    assert (out[:, 40:] != -1).all()
    assert np.array_equal(out[:, :40], X[:, :40])
    # partial_fit reads the placeholder as missing too.
    X_nan = np.where(X == -1, np.nan, X)
    online = [DGCSPNImputer(missing_values=mv, sum_channels=4, random_state=0).partial_fit(
        data).network_weights_ for mv, data in ((-1, X), (np.nan, X_nan))]
    assert all(np.array_equal(a, b) for a, b in zip(*online))
    # score_samples / score marginalise the placeholder as transform imputes it.
    imp_nan = DGCSPNImputer(max_epochs=1, sum_channels=4, random_state=0).fit(X_train)
    assert np.array_equal(imp.score_samples(X), imp_nan.score_samples(X_nan))
    assert imp.score(X) == imp_nan.score(X_nan)
    # Sparse input is refused with the validation's message, whatever the placeholder.
    with pytest.raises(TypeError, match="[Ss]parse"):
        imp.transform(scipy.sparse.csr_matrix(np.where(X == -1, 0, X)))
    # With another placeholder NaN is bad input (as in sklearn.impute), not a second marker.
    for call in (imp.transform, imp.fit, imp.partial_fit, DGCSPNImputer(
            missing_values=-1, n_networks=2, max_epochs=1).fit):
        with pytest.raises(ValueError, match="contains NaN, but missing_values=-1"):
            call(X_nan)


def test_imputer_any_nan_scalar_marks_missing_values(digits_split):
    X = _bottom_half_missing(digits_split[1][:10])
    imp = DGCSPNImputer(missing_values=np.float32("nan"), max_epochs=1, sum_channels=4,
                        random_state=0).fit(digits_split[0][:100])
    assert np.isfinite(imp.transform(X)).all()


def test_imputer_pandas_na_marks_missing_values(digits_split):
    """``missing_values=pd.NA`` (as ``sklearn.impute.SimpleImputer`` takes it) on pandas'
    nullable columns: the same fit and completions as NaN with ``np.nan``, and NaN put
    back by ``inverse_transform``."""
    pd = pytest.importorskip("pandas")
    X_train = np.concatenate([_bottom_half_missing(digits_split[0][:30]),
                              digits_split[0][30:100]])
    X = _bottom_half_missing(digits_split[1][:10])
    params = dict(max_epochs=1, sum_channels=4, random_state=0, add_indicator=True)
    expect = DGCSPNImputer(**params).fit(X_train).transform(X)
    nullable = [pd.DataFrame(a).astype("Float64") for a in (X_train, X)]
    assert nullable[1].isna().to_numpy().sum() == np.isnan(X).sum()
    imp = DGCSPNImputer(missing_values=pd.NA, **params).fit(nullable[0])
    out = imp.transform(nullable[1])
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    np.testing.assert_array_equal(np.isnan(imp.inverse_transform(out)), np.isnan(X))


def test_imputer_mpe_completion(digits_split):
    X_train, X_test = digits_split[0][:300], digits_split[1][:10]
    X = _bottom_half_missing(X_test)
    imp = DGCSPNImputer(completion="mpe", max_epochs=1, sum_channels=4, random_state=0)
    out = imp.fit(X_train).transform(X)
    assert np.isfinite(out).all()
    marginal = imp.set_params(completion="marginal").transform(X)
    assert not np.allclose(out, marginal)


def test_mpe_completion_depends_neither_on_the_batch_nor_on_random_state(digits_split):
    # Ties between maximisers are common after USI training (equal weights over the
    # components of a missing pixel); a random tie-break keyed by the row's position made
    # a row's MPE completion change with the rows around it.
    imp = DGCSPNImputer(completion="mpe", max_epochs=10, tol=None, sum_channels=4,
                        random_state=0).fit(digits_split[0][:500])
    X = _bottom_half_missing(digits_split[1][:40])
    together = imp.transform(X)
    alone = np.vstack([imp.transform(X[i:i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    np.testing.assert_allclose(together, imp.transform(X[::-1])[::-1], atol=1e-4)
    np.testing.assert_allclose(together, imp.impute(X, method="mpe", random_state=1),
                               atol=1e-4)


def test_unknown_impute_method(fitted_density):
    with pytest.raises(ValueError, match="method must be"):
        fitted_density.impute(np.zeros((1, 64)), method="median")


# ---------------------------------------------------------------------- several networks
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def ensemble_and_warnings(digits_split):
    """A fitted 3-network imputer, and the warnings logged while it was fitted and first
    queried by every completion method (each network traces its functions then)."""
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        imp = DGCSPNImputer(n_networks=3, max_epochs=2, sum_channels=4, random_state=0).fit(
            digits_split[0][:300])
        X = _bottom_half_missing(digits_split[1][:20])
        for method in ("marginal", "mpe", "sample"):
            imp.impute(X, method=method, random_state=0)
    finally:
        logging.getLogger().removeHandler(records)
    return imp, records.messages


@pytest.fixture(scope="module")
def imputer_ensemble(ensemble_and_warnings):
    return ensemble_and_warnings[0]


def test_ensemble_networks_are_independently_seeded(imputer_ensemble):
    members = imputer_ensemble.estimators_
    assert len(members) == 3 and not hasattr(imputer_ensemble, "network_weights_")
    assert len({m.random_state for m in members}) == 3
    assert all(m.n_networks == 1 and hasattr(m, "network_weights_") for m in members)
    # Different seeds, different hard-EM optima.
    assert not np.allclose(members[0].network_weights_[-1], members[1].network_weights_[-1])
    assert imputer_ensemble.n_iter_ == 2 and len(imputer_ensemble.history_) == 2
    assert np.allclose(imputer_ensemble.history_,
                       np.mean([m.history_ for m in members], axis=0))


def test_ensemble_score_is_the_uniform_mixture(imputer_ensemble, digits_split):
    X = digits_split[1][:15].copy()
    X[::2, 20:44] = np.nan
    per_network = np.stack([m.score_samples(X) for m in imputer_ensemble.estimators_])
    expected = np.log(np.mean(np.exp(per_network), axis=0))
    assert np.allclose(imputer_ensemble.score_samples(X), expected, rtol=0, atol=1e-6)
    assert np.allclose(imputer_ensemble.score_samples(np.full((1, 64), np.nan)), 0.0,
                       atol=1e-4)


def test_ensemble_marginal_completion_averages_the_networks(imputer_ensemble, digits_split):
    X = _bottom_half_missing(digits_split[1][:40])
    ours = imputer_ensemble.transform(X)
    singles = np.stack([m.transform(X) for m in imputer_ensemble.estimators_])
    assert np.allclose(ours, singles.mean(axis=0), atol=1e-4)
    assert np.array_equal(ours[:, :32], X[:, :32])


def test_ensemble_mpe_and_sample_use_the_most_probable_network(imputer_ensemble,
                                                               digits_split):
    X = _bottom_half_missing(digits_split[1][:30])
    members = imputer_ensemble.estimators_
    best = np.argmax([m.score_samples(X) for m in members], axis=0)
    assert len(np.unique(best)) > 1, "the test needs rows won by different networks"
    mpe = imputer_ensemble.impute(X, method="mpe", random_state=0)
    # Each row as the winning network alone completes it (with the same random_state).
    per_network = [m.impute(X, method="mpe", random_state=0) for m in members]
    expected = np.stack([per_network[b][i] for i, b in enumerate(best)])
    assert np.allclose(mpe, expected, atol=1e-4)
    draws = imputer_ensemble.impute(X, method="sample", random_state=0)
    assert np.isfinite(draws).all() and np.array_equal(draws[:, :32], X[:, :32])
    again = imputer_ensemble.impute(X, method="sample", random_state=0)
    assert np.array_equal(draws, again)
    samples = imputer_ensemble.sample(7, random_state=0)
    assert samples.shape == (7, 64) and np.isfinite(samples).all()
    # The first samples of a longer draw are the same samples, as for one network (the
    # networks' random states depended on how many draws each got).
    for n in (1, 3, 50):
        assert np.array_equal(imputer_ensemble.sample(n, random_state=0)[:7], samples[:n])


def test_ensemble_follows_standardize_set_after_fit(imputer_ensemble, digits_split):
    # 'sample' and None keep no fitted state, so a set_params after fit acts at query
    # time; the mixture scales once with its own setting, as a single network does (its
    # networks' copies of the parameter, still 'sample', must not scale a second time).
    X = digits_split[1][:20]
    mean, std = X.mean(axis=1, keepdims=True), X.std(axis=1, keepdims=True)
    Z = _bottom_half_missing((X - mean) / std)
    members = imputer_ensemble.estimators_
    as_sample = imputer_ensemble.impute(Z, random_state=0)
    imputer_ensemble.set_params(standardize=None)
    try:
        ours = imputer_ensemble.impute(Z, random_state=0)
        scores = imputer_ensemble.score_samples(Z)
        draws = imputer_ensemble.sample(5, random_state=0)
        for m in members:
            m.set_params(standardize=None)
        expected = np.mean([m.impute(Z, random_state=0) for m in members], axis=0)
        expected_scores = logsumexp([m.score_samples(Z) for m in members], axis=0) - np.log(3)
    finally:
        for e in [imputer_ensemble] + members:
            e.set_params(standardize="sample")
    assert np.abs(ours - as_sample).max() > 0.1  # the setting changed the completion
    assert np.allclose(ours, expected, atol=1e-4)
    assert np.allclose(scores, expected_scores, atol=1e-6)
    assert draws.shape == (5, 64) and np.isfinite(draws).all()


def test_feature_statistics_do_not_outlive_a_refit(digits_split):
    X = digits_split[0][:200]
    est = DGCSPNDensityEstimator(max_epochs=1, sum_channels=4, random_state=0)
    est.fit(X)
    assert hasattr(est, "feature_mean_")
    est.set_params(standardize="sample").fit(X)
    assert not hasattr(est, "feature_mean_")
    est.set_params(standardize="feature")  # the network was fitted on per-image scaling
    for query in (est.score_samples, est.impute):
        with pytest.raises(ValueError, match="standardize='feature'.*fit it again"):
            query(X[:3])
    with pytest.raises(ValueError, match="fit it again"):
        est.sample(2)


def test_ensemble_partial_fit_follows_set_params(digits_split):
    # As with one network, a set_params between partial_fit calls acts at the next call
    # (a learning-rate schedule in a streaming loop); the networks once kept the
    # parameters of the first call.
    X = digits_split[0][:200]
    kept = DGCSPNImputer(n_networks=2, max_epochs=1, sum_channels=4, learning="gradient",
                         random_state=0)
    changed = DGCSPNImputer(**kept.get_params())
    for imp in (kept, changed):
        imp.partial_fit(X)
    changed.set_params(learning_rate=0.3, batch_size=8)
    for imp in (kept, changed):
        imp.partial_fit(X)
    assert all(e.learning_rate == 0.3 and e.batch_size == 8 for e in changed.estimators_)
    assert not np.allclose(kept.score_samples(X[:20]), changed.score_samples(X[:20]))


def test_ensemble_refit_pickle_and_partial_fit(digits_split):
    X_train, X_test = digits_split[0][:200], _bottom_half_missing(digits_split[1][:10])
    imp = DGCSPNImputer(n_networks=2, max_epochs=1, sum_channels=4, missing_values=-1,
                        random_state=0)
    X_placeholder = np.where(np.isnan(X_test), -1, X_test)
    out = imp.fit(X_train).transform(X_placeholder)
    assert (out[:, 32:] != -1).all()
    restored = pickle.loads(pickle.dumps(imp))
    assert np.array_equal(restored.transform(X_placeholder), out)
    imp.partial_fit(X_train[:64])
    assert imp.n_iter_ == 2 and all(m.n_iter_ == 2 for m in imp.estimators_)
    for n_networks in (1, 3):  # one network or another number: not the fitted ones
        with pytest.raises(ValueError, match=rf"n_networks={n_networks} differs .*\(2\)"):
            imp.set_params(n_networks=n_networks).partial_fit(X_train[:64])
    assert len(imp.estimators_) == 2 and imp.n_iter_ == 2  # untouched
    imp.set_params(n_networks=1)
    imp.fit(X_train)  # n_networks=1 now: one network, no estimators_
    assert not hasattr(imp, "estimators_") and hasattr(imp, "network_weights_")
    fresh = DGCSPNImputer(n_networks=2, max_epochs=1, sum_channels=4, random_state=0)
    fresh.partial_fit(X_train[:64])
    assert len(fresh.estimators_) == 2 and fresh.n_iter_ == 1


def test_several_networks_do_not_warn_of_retracing(ensemble_and_warnings):
    # Each network traces its own compiled functions once; TensorFlow's detector of
    # frequent retracing must not take those first traces for one function retracing.
    _, warnings = ensemble_and_warnings
    assert not [message for message in warnings if "retracing" in message]


def test_sample_standardisation_warns_on_columns_in_different_units(digits_split):
    # One mean and scale per row suit pixels, not columns in different units: on such
    # data 'sample' completions came out hundreds of standard deviations off.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6)) * np.array([0.1, 1.0, 1.0, 2.0, 5.0, 500.0])
    age = rng.normal(40, 10, 200)
    age_income = np.c_[age, 1000 * age + rng.normal(0, 1000, 200)]  # 2 columns: a median
    half_large = rng.normal(size=(200, 4)) * np.array([1.0, 1.0, 1e4, 1e4])  # missed these
    for estimator, data in ((DGCSPNImputer(max_epochs=1, random_state=0), X),
                            (DGCSPNDensityEstimator(standardize="sample", max_epochs=1,
                                                    random_state=0), X),
                            (DGCSPNImputer(max_epochs=1, random_state=0), age_income),
                            (DGCSPNImputer(max_epochs=1, random_state=0), half_large)):
        with pytest.warns(UserWarning, match="use standardize='feature'") as record:
            estimator.fit(data)
        assert record[0].filename == __file__  # points at the caller, not at skspn
    # An ensemble warns once, not once per network.
    with pytest.warns(UserWarning, match="use standardize='feature'") as record:
        DGCSPNImputer(max_epochs=1, n_networks=2, random_state=0).fit(X)
    assert len([w for w in record if "standardize='feature'" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DGCSPNImputer(standardize="feature", max_epochs=1, random_state=0).fit(X)
        DGCSPNImputer(max_epochs=1, sum_channels=4, random_state=0).fit(digits_split[0][:200])


def test_imputer_preserves_float32_and_warns_of_unobserved_features(digits_split):
    X_train = digits_split[0][:200].copy()
    X = _bottom_half_missing(digits_split[1][:5])
    imp = DGCSPNImputer(max_epochs=1, sum_channels=4, random_state=0).fit(X_train)
    for missing_values, X_in in ((np.nan, X), (-1.0, np.where(np.isnan(X), -1.0, X))):
        out = imp.set_params(missing_values=missing_values).transform(X_in.astype(np.float32))
        assert out.dtype == np.float32  # as sklearn's imputers (it came back float64)
        assert np.array_equal(out[:, :32], X[:, :32].astype(np.float32))
        assert out.dtype == np.float32 and np.isfinite(out).all()
    assert imp.set_params(missing_values=np.nan).transform(X).dtype == np.float64
    pd = pytest.importorskip("pandas")  # nullable Float32 columns too
    assert imp.transform(pd.DataFrame(X).astype("Float32")).dtype == np.float32
    X_train[:, [0, 5]] = np.nan  # never observed: kept (a pixel), with a warning
    with pytest.warns(UserWarning, match=r"2 of 64 features have no observed value in the "
                                         r"training data \(0, 5\)"):
        DGCSPNDensityEstimator(max_epochs=1, sum_channels=4, random_state=0).fit(X_train)
    # An ensemble warns once, with the caller's column names (its networks see arrays).
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X_train, columns=[f"px{i}" for i in range(64)])
    with pytest.warns(UserWarning, match=r"\(px0, px5\)") as record:
        DGCSPNImputer(max_epochs=1, sum_channels=4, n_networks=2, random_state=0).fit(frame)
    assert len([w for w in record if "no observed value" in str(w.message)]) == 1


def test_imputer_bounds_the_imputed_values(digits_split):
    # As IterativeImputer's min_value / max_value: per-image scaling can complete digits
    # (0..16) with negative values; observed values are never changed.
    X_train = digits_split[0][:300]
    X = _bottom_half_missing(digits_split[1][:40])
    free = DGCSPNImputer(max_epochs=1, sum_channels=4, random_state=0).fit(X_train)
    X_obs = X.copy()
    X_obs[:, 0] = -5.0  # an observed value outside the bounds stays as it is
    unbounded = free.transform(X_obs)
    assert unbounded[:, 32:].min() < 0 or unbounded[:, 32:].max() > 16  # else no test
    for low, high in ((0.0, 16.0), (np.zeros(64), np.full(64, 16.0))):
        out = free.set_params(min_value=low, max_value=high).transform(X_obs)
        assert out[:, 32:].min() >= 0 and out[:, 32:].max() <= 16
        assert np.array_equal(out[:, :32], X_obs[:, :32])
        np.testing.assert_array_equal(out[:, 32:], np.clip(unbounded[:, 32:], 0, 16))
    with pytest.raises(ValueError, match="min_value must not exceed max_value; for feature 3"):
        bad = np.zeros(64)
        bad[3] = 20.0
        DGCSPNImputer(min_value=bad, max_value=16.0, max_epochs=1).fit(X_train)
    with pytest.raises(ValueError, match=r"one value per feature \(64\), got shape \(3,\)"):
        DGCSPNImputer(min_value=[0, 0, 0], max_epochs=1).fit(X_train)


def test_imputer_add_indicator(digits_split):
    # As sklearn.impute's add_indicator: one 0/1 column per feature missing in training,
    # after the imputed features; inverse_transform puts the placeholder back.
    from sklearn.impute import MissingIndicator

    pd = pytest.importorskip("pandas")
    X_train = digits_split[0][:200].copy()
    X_train[:50, 60:] = np.nan  # features 60..63 missing in training
    X = digits_split[1][:20].copy()
    X[:, 62:] = np.nan
    X[:5, 10] = np.nan  # missing only at transform time: imputed, no indicator column
    imp = DGCSPNImputer(max_epochs=1, sum_channels=4, random_state=0, add_indicator=True)
    out = imp.fit(X_train).transform(X)
    assert out.shape == (20, 64 + 4)
    expected = MissingIndicator(error_on_new=False).fit(X_train).transform(X)
    np.testing.assert_array_equal(out[:, 64:], expected.astype(float))
    plain = imp.set_params(add_indicator=False).transform(X)
    np.testing.assert_array_equal(out[:, :64], plain)
    imp.set_params(add_indicator=True)
    # Image arrays give the 2-D output too; the output round-trips through the inverse.
    np.testing.assert_array_equal(imp.transform(X.reshape(-1, 8, 8)), out)
    back = imp.inverse_transform(out)
    np.testing.assert_array_equal(np.isnan(back[:, 60:]), np.isnan(X[:, 60:]))
    np.testing.assert_array_equal(back[:, 10], out[:, 10])  # no indicator for feature 10
    # Column names and pandas output.
    names = [f"px{i}" for i in range(64)]
    frame = pd.DataFrame(X_train, columns=names)
    imp.set_output(transform="pandas").fit(frame)
    assert list(imp.get_feature_names_out())[-4:] == [
        f"missingindicator_px{i}" for i in range(60, 64)]
    result = imp.transform(pd.DataFrame(X, columns=names))
    assert list(result.columns) == list(imp.get_feature_names_out())
    # A placeholder other than NaN marks the indicator's entries as well.
    placeholder = DGCSPNImputer(max_epochs=1, sum_channels=4, random_state=0,
                                missing_values=-1, add_indicator=True)
    coded = placeholder.fit(np.nan_to_num(X_train, nan=-1)).transform(np.nan_to_num(X, nan=-1))
    np.testing.assert_array_equal(coded[:, 64:], expected.astype(float))
    assert (placeholder.inverse_transform(coded)[:, 62:] == -1).all()
    # partial_fit: the features missing in any batch, whatever add_indicator was then.
    online = DGCSPNImputer(max_epochs=1, sum_channels=4, random_state=0, add_indicator=True)
    online.partial_fit(X_train[:100]).partial_fit(X_train[100:])
    np.testing.assert_array_equal(online.indicator_.features_, [60, 61, 62, 63])
    online.set_params(add_indicator=False).partial_fit(X_train[100:])
    assert online.indicator_ is None
    online.set_params(add_indicator=True).partial_fit(X_train[100:])
    np.testing.assert_array_equal(online.indicator_.features_, [60, 61, 62, 63])
    # Misuse gets clear errors.
    with pytest.raises(ValueError, match="add_indicator=True"):
        DGCSPNImputer(max_epochs=1, sum_channels=4).fit(X_train).inverse_transform(out)
    # Set after fit, it needs no refit: the fit remembered the missing features.
    late = DGCSPNImputer(max_epochs=1, sum_channels=4, random_state=0).fit(X_train)
    np.testing.assert_array_equal(late.set_params(add_indicator=True).transform(X)[:, 64:],
                                  expected.astype(float))
    with pytest.raises(ValueError, match="64 \\+ 4 indicator features"):
        imp.inverse_transform(out[:, :66])


@pytest.mark.parametrize("leaf, n_values", [("bernoulli", 2), ("categorical", 3)])
def test_imputer_ensemble_of_discrete_networks_completes_with_valid_codes(leaf, n_values):
    # The networks' completions cannot be averaged as numbers (a review got 0.333 for
    # Bernoulli pixels): each entry gets the most probable value of the average of the
    # networks' posterior marginals, computed here by enumeration with each network.
    rng = np.random.default_rng(5)
    X = rng.integers(0, n_values, size=(300, 6)).astype(float)
    X[:, 3] = (X[:, 0] + X[:, 1]) % n_values  # some structure to learn
    imp = DGCSPNImputer(image_shape=(2, 3), leaf=leaf, n_components=2, sum_channels=3,
                        n_networks=3, standardize=None, learning="gradient", max_epochs=3,
                        random_state=0).fit(X)
    states = np.array(list(itertools.product(range(n_values), repeat=6)), float)
    queries = np.array([[0, 1, np.nan, np.nan, 1, np.nan],
                        [np.nan, np.nan, 1, 0, np.nan, 1],
                        [np.nan] * 6,
                        [1, np.nan, 0, np.nan, np.nan, 0]])
    completed = imp.transform(queries)
    assert set(np.unique(completed)) <= set(range(n_values))
    for row, out in zip(queries, completed):
        fits = np.all((states == row) | np.isnan(row), axis=1)
        candidates = states[fits]
        marginals = np.zeros((6, n_values))
        for network in imp.estimators_:
            weights = np.exp(network.score_samples(candidates))
            weights /= weights.sum()
            for j in range(6):
                marginals[j] += np.bincount(candidates[:, j].astype(int), weights,
                                            minlength=n_values) / len(imp.estimators_)
        hidden = np.isnan(row)
        # Ties (none expected with trained weights) would make the argmax ambiguous.
        top2 = np.sort(marginals[hidden], axis=1)[:, -2:]
        assert np.all(top2[:, 1] - top2[:, 0] > 1e-4)
        np.testing.assert_array_equal(out[hidden], np.argmax(marginals[hidden], axis=1))


def test_colour_components_are_colours_of_the_data():
    # Digits drawn in pure red or pure blue. With per-colour quantile means a component
    # paired bright red with bright blue, so EM (which keeps the leaves) could not tell a
    # red digit from a blue one: completions came out purple (red share 0.46 for both).
    X = load_digits().data[:400].reshape(-1, 8, 8) / 16.0
    red = np.random.RandomState(0).rand(400) < 0.5
    colour = np.zeros(X.shape + (3,))
    colour[red, ..., 0] = X[red]
    colour[~red, ..., 2] = X[~red]
    train, test, red_test = colour[:300], colour[300:], red[300:]
    est = DGCSPNDensityEstimator(sum_channels=8, max_epochs=5, random_state=0).fit(train)
    masked = test.copy()
    masked[:, 4:] = np.nan
    completed = est.impute(masked)[:, 4:]
    red_share = completed[..., 0].sum((1, 2)) / (completed[..., [0, 2]].sum((1, 2, 3)))
    assert red_share[red_test].mean() > 0.8 and red_share[~red_test].mean() < 0.2
    no_blue = test.copy()
    no_blue[..., 2] = np.nan
    blue = est.impute(no_blue)[..., 2]
    assert blue[red_test].mean() < 0.05
    assert abs(blue[~red_test].mean() - test[~red_test][..., 2].mean()) < 0.05
    # Each component's mean is a colour seen at its pixel: never bright in both channels.
    means = est.network_weights_[0][:, :, 0] * est.feature_scale_[..., None] \
        + est.feature_mean_[..., None]  # [H, W, C, K] back in X's units
    assert not np.any((means[:, :, 0] > 0.3) & (means[:, :, 2] > 0.3))
