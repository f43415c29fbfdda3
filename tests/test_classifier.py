"""DGCSPNClassifier: accuracy, missing pixels, probabilities, labels, determinism."""

import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.ensemble import BaggingClassifier
from sklearn.model_selection import train_test_split

from skspn import DGCSPNClassifier


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def fitted(digits):
    X_train, _, y_train, _ = digits
    return DGCSPNClassifier(max_epochs=20, random_state=0).fit(X_train, y_train)


def test_leaves_start_as_the_paper_s(digits):
    """Normal leaves start with unit scale (the paper's variance 1, which learned faster
    than 0.5 on MNIST) and means equidistant per pixel over ``leaf_range_``."""
    X_train, _, y_train, _ = digits
    clf = DGCSPNClassifier(max_epochs=1, learning_rate=1e-9, n_components=5, sum_channels=4,
                           random_state=0).fit(X_train, y_train)
    leaf = clf._network.leaf
    np.testing.assert_allclose(leaf.scale.numpy(), 1.0, atol=1e-4)
    low, high = clf.leaf_range_
    np.testing.assert_allclose(leaf.loc.numpy().reshape(64, 5),
                               np.broadcast_to(np.linspace(low, high, 5), (64, 5)), atol=1e-4)


def test_digits_accuracy(fitted, digits):
    _, X_test, _, y_test = digits
    assert fitted.score(X_test, y_test) >= 0.95
    hist = fitted.history_
    assert len(hist["loss"]) == fitted.n_iter_ == 20
    assert hist["loss"][-1] < hist["loss"][0]
    # Learns from the first epoch (no collapse onto one class at initialisation).
    assert hist["train_accuracy"][0] > 0.3


def test_accuracy_with_half_the_pixels_missing(fitted, digits):
    _, X_test, _, y_test = digits
    X = X_test.copy()
    X[np.random.default_rng(0).random(X.shape) < 0.5] = np.nan
    assert fitted.score(X, y_test) > 0.6  # chance is 0.1


def test_probabilities(fitted, digits):
    X_test = digits[1][:50]
    proba = fitted.predict_proba(X_test)
    assert proba.shape == (50, 10)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert np.allclose(np.exp(fitted.predict_log_proba(X_test)), proba)
    assert np.array_equal(fitted.predict(X_test), fitted.classes_[proba.argmax(axis=1)])
    # Deterministic prediction: dropout is off outside training.
    assert np.array_equal(fitted.predict_proba(X_test), proba)


def test_score_samples_is_log_marginal(fitted, digits):
    X_test = digits[1][:20]
    ll = fitted.score_samples(X_test)
    assert ll.shape == (20,) and np.isfinite(ll).all()
    X = X_test.copy()
    X[:] = np.nan
    assert np.allclose(fitted.score_samples(X), 0.0, atol=1e-4)
    # Digits are more probable than noise under the joint model.
    noise = np.random.default_rng(0).uniform(0, 16, size=(20, 64))
    assert np.median(ll) > np.median(fitted.score_samples(noise))


def test_string_labels_round_trip(digits):
    X_train, X_test, y_train, _ = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                      "eight", "nine"])
    clf = DGCSPNClassifier(max_epochs=1, sum_channels=8, n_components=8, random_state=0)
    clf.fit(X_train[:300], names[y_train[:300]])
    assert set(clf.classes_) == set(names)
    assert set(clf.predict(X_test[:20])) <= set(names)


def test_same_random_state_same_model(digits):
    X_train, X_test, y_train, _ = digits
    kw = dict(max_epochs=1, sum_channels=8, n_components=8)
    a = DGCSPNClassifier(random_state=3, **kw).fit(X_train[:300], y_train[:300])
    b = DGCSPNClassifier(random_state=3, **kw).fit(X_train[:300], y_train[:300])
    c = DGCSPNClassifier(random_state=4, **kw).fit(X_train[:300], y_train[:300])
    for u, v in zip(a.network_weights_, b.network_weights_):
        assert np.array_equal(u, v)
    assert np.array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    assert not all(np.array_equal(u, v) for u, v in zip(a.network_weights_, c.network_weights_))


def test_xla_compiled_training_matches_the_plain_one(digits):
    """``jit_compile=True`` trains the same model (XLA-compiled step and queries, dropout
    masks included) up to float rounding."""
    X_train, X_test, y_train, _ = digits
    kw = dict(max_epochs=1, sum_channels=8, n_components=8, random_state=3)
    plain = DGCSPNClassifier(**kw).fit(X_train[:256], y_train[:256])
    compiled = DGCSPNClassifier(jit_compile=True, **kw).fit(X_train[:256], y_train[:256])
    assert compiled._learner._mask_plan  # the compiled step is given its dropout masks
    for u, v in zip(plain.network_weights_, compiled.network_weights_):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(compiled.predict_proba(X_test), plain.predict_proba(X_test),
                               atol=1e-3)


def test_early_stopping_stops_and_keeps_the_best_epoch(digits, monkeypatch):
    """Every epoch after the first is made to forget what the sums learnt: the fit stops
    ``n_iter_no_change`` epochs after the first and ends with the first epoch's weights."""
    X_train, _, y_train, _ = digits
    original_epoch = DGCSPNClassifier._epoch
    after_epoch = []

    def epoch_then_ruin(self, *args):
        loss = original_epoch(self, *args)
        if after_epoch:
            self._network.set_weights([np.zeros_like(w) if w.ndim == 3 else w
                                       for w in self._network.get_weights()])
        after_epoch.append([w.copy() for w in self._network.get_weights()])
        return loss

    monkeypatch.setattr(DGCSPNClassifier, "_epoch", epoch_then_ruin)
    clf = DGCSPNClassifier(max_epochs=30, early_stopping=True, n_iter_no_change=2,
                           sum_channels=16, n_components=8, random_state=0)
    clf.fit(X_train, y_train)
    assert clf.n_iter_ == 3 and len(after_epoch) == 3
    val = clf.history_["validation_accuracy"]
    assert val[0] > max(val[1:])
    for best, kept in zip(after_epoch[0], clf.network_weights_):
        np.testing.assert_array_equal(best, kept)


def test_partial_fit_counts_passes_and_learns(digits):
    X_train, X_test, y_train, y_test = digits
    inc = DGCSPNClassifier(random_state=0)
    for _ in range(2):
        for chunk in np.array_split(np.arange(len(X_train)), 2):
            inc.partial_fit(X_train[chunk], y_train[chunk], classes=np.arange(10))
    assert inc.n_iter_ == 4
    assert inc.score(X_test, y_test) > 0.3  # chance is 0.1


def test_warm_start_continues(digits):
    X_train, _, y_train, _ = digits
    clf = DGCSPNClassifier(max_epochs=1, warm_start=True, sum_channels=8, n_components=8,
                           random_state=0)
    clf.fit(X_train[:300], y_train[:300])
    first = [w.copy() for w in clf.network_weights_]
    clf.fit(X_train[:300], y_train[:300])
    assert clf.n_iter_ == 2 and len(clf.history_["loss"]) == 2
    assert not all(np.array_equal(u, v) for u, v in zip(first, clf.network_weights_))


def test_warm_fit_with_early_stopping_keeps_the_model_it_started_from(digits, monkeypatch):
    """A warm fit with early stopping counts the model it starts from as a candidate: when
    every epoch does worse on the hold-out, it ends where it started (as scikit-learn's
    MLPClassifier keeps its best validation score across warm fits)."""
    X_train, _, y_train, _ = digits
    clf = DGCSPNClassifier(max_epochs=3, early_stopping=True, warm_start=True,
                           sum_channels=8, n_components=8, random_state=0)
    clf.fit(X_train[:300], y_train[:300])
    start = [w.copy() for w in clf.network_weights_]
    original_epoch = DGCSPNClassifier._epoch

    def ruinous_epoch(self, *args):  # trains, then forgets what the sums had learnt
        loss = original_epoch(self, *args)
        self._network.set_weights([np.zeros_like(w) if w.ndim == 3 else w
                                   for w in self._network.get_weights()])
        return loss

    monkeypatch.setattr(DGCSPNClassifier, "_epoch", ruinous_epoch)
    clf.set_params(max_epochs=2).fit(X_train[:300], y_train[:300])
    assert clf.n_iter_ == 5
    assert max(clf.history_["validation_accuracy"][3:]) < max(
        clf.history_["validation_accuracy"][:3])
    for before, after in zip(start, clf.network_weights_):
        np.testing.assert_array_equal(before, after)


def test_sample_weight_zero_ignores_samples(digits):
    X_train, X_test, y_train, _ = digits
    w = np.ones(len(y_train))
    w[y_train == 0] = 0.0
    clf = DGCSPNClassifier(max_epochs=2, sum_channels=8, n_components=8, random_state=0)
    clf.fit(X_train, y_train, sample_weight=w)
    # Class 0 has zero weight: its prior is ~0, so it is never predicted.
    assert (clf.predict(X_test) != 0).all()


def test_early_stopping_on_few_samples_per_class(digits):
    # 2 samples of each of 10 classes: a stratified split of 2 validation samples is
    # impossible, so the split is a plain random one (train_test_split's test_size error
    # before); holding out every sample is refused before the network is built.
    X_train, _, y_train, _ = digits
    idx = np.concatenate([np.where(y_train == c)[0][:2] for c in range(10)])
    params = dict(max_epochs=1, sum_channels=4, n_components=4, random_state=0,
                  early_stopping=True)
    for fraction in (0.1, 0.9):
        clf = DGCSPNClassifier(validation_fraction=fraction, **params)
        clf.fit(X_train[idx], y_train[idx])
        assert clf.history_["validation_accuracy"][0] is not None
    with pytest.raises(ValueError, match="validation_fraction=0.99 holds out 20 of 20"):
        DGCSPNClassifier(validation_fraction=0.99, **params).fit(X_train[idx], y_train[idx])


def test_partial_fit_refuses_other_classes_later(digits):
    X_train, _, y_train, _ = digits
    clf = DGCSPNClassifier(max_epochs=1, sum_channels=8, n_components=8, random_state=0)
    clf.partial_fit(X_train[:100], y_train[:100], classes=np.arange(10))
    clf.partial_fit(X_train[100:200], y_train[100:200], classes=np.arange(10)[::-1])
    for other in (np.arange(12), [0, 1]):
        with pytest.raises(ValueError, match="is not the same as on the first call"):
            clf.partial_fit(X_train[100:200], y_train[100:200], classes=other)


def test_negative_sample_weight_is_refused(digits):
    X_train, _, y_train, _ = digits
    w = np.ones(len(y_train))
    w[3] = -1.0
    clf = DGCSPNClassifier(max_epochs=1, sum_channels=8, n_components=8, random_state=0)
    for fit in (clf.fit, clf.partial_fit):
        kwargs = {"classes": np.unique(y_train)} if fit == clf.partial_fit else {}
        with pytest.raises(ValueError, match="[Nn]egative"):
            fit(X_train, y_train, sample_weight=w, **kwargs)


@pytest.mark.parametrize("bad, match", [
    (lambda X, y: (X, np.zeros(len(y))), "only one class"),
    (lambda X, y: (X, y[:-1]), "samples"),
    (lambda X, y: (np.where(X == X.max(), np.inf, X), y), "infinity"),
])
def test_bad_training_input(digits, bad, match):
    X, _, y, _ = digits
    Xb, yb = bad(X[:50], y[:50])
    with pytest.raises(ValueError, match=match):
        DGCSPNClassifier(max_epochs=1).fit(Xb, yb)


def test_wrong_feature_count_at_predict(fitted):
    with pytest.raises(ValueError, match="features"):
        fitted.predict(np.zeros((2, 63)))


def test_partial_fit_learns_classes_missing_from_the_first_chunk(digits):
    # The prior started at the first chunk's frequencies (1e-6 for absent classes), and
    # Adam did not lift it in four passes: classes 5-9 were never predicted.
    X_train, X_test, y_train, y_test = digits
    first = np.flatnonzero(y_train < 5)[:100]
    clf = DGCSPNClassifier(sum_channels=8, n_components=8, random_state=0)
    clf.partial_fit(X_train[first], y_train[first], classes=np.arange(10))
    for _ in range(4):
        clf.partial_fit(X_train, y_train)
    late = y_test >= 5
    # About as well as when the first chunk holds every class (0.36 for this small
    # network after four passes; chance is 0.1, and the old prior gave 0.0).
    assert np.mean(clf.predict(X_test[late]) == y_test[late]) > 0.25


def test_continued_training_follows_set_params_as_after_pickling(digits):
    # The live learner kept its learning rate (partial_fit) and dropout (warm fit) after
    # set_params, while an unpickled one was rebuilt with the new values.
    X, y = digits[0][:300], digits[2][:300]
    params = dict(max_epochs=1, sum_channels=4, n_components=4, random_state=0)
    cases = [(DGCSPNClassifier(**params).partial_fit(X, y, classes=np.arange(10)),
              dict(learning_rate=0.2), "partial_fit"),
             (DGCSPNClassifier(warm_start=True, **params).fit(X, y),
              dict(product_dropout=0.6, input_dropout=0.5), "fit")]
    for live, change, method in cases:
        unpickled = pickle.loads(pickle.dumps(live))
        for clf in (live, unpickled):
            clf.set_params(**change)
            getattr(clf, method)(X, y)
        np.testing.assert_allclose(live.predict_proba(X), unpickled.predict_proba(X),
                                   atol=1e-5)


def test_zero_weight_batches_and_bagging(digits):
    # A batch whose samples all weigh 0 made the Adam step 0 / 0 = NaN ("training
    # diverged"); bootstrap weights of BaggingClassifier hit that.
    X, y = digits[0][:257], digits[2][:257]
    w = np.ones(len(y))
    w[np.random.RandomState(0).rand(len(y)) < 0.3] = 0.0
    params = dict(max_epochs=2, sum_channels=4, n_components=4, batch_size=64,
                  random_state=0)
    clf = DGCSPNClassifier(**params).fit(X, y, sample_weight=w)
    assert np.isfinite(clf.history_["loss"]).all()
    assert all(type(loss) is float for loss in clf.history_["loss"])
    BaggingClassifier(DGCSPNClassifier(**params), n_estimators=2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="non-zero"):  # scikit-learn's own check
        DGCSPNClassifier(**params).fit(X, y, sample_weight=np.zeros(len(y)))


def test_zero_weight_after_the_hold_out_is_refused(digits, monkeypatch):
    # Weights positive only in the early-stopping hold-out leave nothing to train on.
    import skspn.estimators.classifier as classifier_module

    X, y = digits[0][:100], digits[2][:100]
    w = np.zeros(len(y))
    w[:10] = 1.0
    monkeypatch.setattr(classifier_module, "train_test_split",
                        lambda idx, **kwargs: (idx[10:], idx[:10]))
    clf = DGCSPNClassifier(max_epochs=1, early_stopping=True, sum_channels=4, n_components=4,
                           random_state=0)
    with pytest.raises(ValueError, match="0 for every training sample left after the "
                                         "early-stopping hold-out"):
        clf.fit(X, y, sample_weight=w)


def test_core_step_with_zero_total_weight_stays_finite():
    # The core divides by max(weight sum, 1e-30): zero gradients, not 0 / 0 = NaN.
    from skspn.core import DGCSPN, NormalLeaf, plan_products
    from skspn.core.learning import GradientLearner

    products = plan_products((4, 4), depth="auto")
    net = DGCSPN((4, 4), NormalLeaf(np.zeros((4, 4, 1, 2), np.float32)), products,
                 [2] * (len(products) - 1), n_classes=2, seed=0)
    learner = GradientLearner(net, "ce", 1e-2)
    x = np.random.default_rng(0).normal(size=(4, 4, 4, 1)).astype(np.float32)
    loss = learner.step(x, np.zeros(4, np.float32), np.array([1, 2], np.int64),
                        np.zeros(4, np.int32))
    assert np.isfinite(float(loss))
    assert all(np.isfinite(v.numpy()).all() for v in net.trainable_variables)


def test_partial_fit_validates_parameters_set_between_calls(digits):
    X, y = digits[0][:100], digits[2][:100]
    clf = DGCSPNClassifier(sum_channels=4, n_components=4, random_state=0)
    clf.partial_fit(X, y, classes=np.arange(10))
    for bad in (dict(learning_rate=-0.05), dict(product_dropout=1.0)):
        with pytest.raises(ValueError, match="must be a float in the range|parameter"):
            clone_of_fitted = pickle.loads(pickle.dumps(clf)).set_params(**bad)
            clone_of_fitted.partial_fit(X, y)


def test_score_samples_is_a_density_of_x_with_feature_standardisation(digits):
    X, y = digits[0][:300], digits[2][:300]
    a, b = 1e-3, 7.0
    params = dict(max_epochs=2, sum_channels=4, n_components=4, standardize="feature",
                  random_state=0)
    plain = DGCSPNClassifier(**params).fit(X, y).score_samples(X[:10])
    scaled = DGCSPNClassifier(**params).fit(a * X + b, y).score_samples(a * X[:10] + b)
    n_varying = int(np.sum(X.std(axis=0) > 0))
    np.testing.assert_allclose(scaled, plain - n_varying * np.log(a), atol=1e-3)


def test_one_class_message_shows_the_label(digits):
    X = digits[0][:20]
    with pytest.raises(ValueError, match=r"y has only one class \(3.0, n_samples=20\)"):
        DGCSPNClassifier().fit(X, np.full(20, 3.0))


def test_warm_fits_hold_out_the_same_validation_samples(digits, monkeypatch):
    import skspn.estimators.classifier as classifier_module

    held_out = []

    def recording_split(*args, **kwargs):
        idx_train, idx_val = train_test_split(*args, **kwargs)
        held_out.append(np.sort(idx_val))
        return idx_train, idx_val

    monkeypatch.setattr(classifier_module, "train_test_split", recording_split)
    X, y = digits[0][:200], digits[2][:200]
    clf = DGCSPNClassifier(max_epochs=1, early_stopping=True, warm_start=True,
                           sum_channels=4, n_components=4, random_state=0)
    clf.fit(X, y)
    clf.fit(X, y)
    assert len(held_out) == 2 and np.array_equal(held_out[0], held_out[1])
