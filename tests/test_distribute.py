"""Training under tf.distribute: the same model as on one device, and clean estimators.

The suite splits the CPU into two logical devices (conftest.py), so a 2-replica
``MirroredStrategy`` runs here. Each replica trains on its half of every global batch and
the counts / gradients are summed across replicas; with the random draws keyed by each
sample's index in the global batch, distributed training is single-device training up to
float rounding (exactly, for hard-EM counts).
"""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skspn import DGCSPNClassifier, DGCSPNDensityEstimator, DGCSPNImputer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits_with_nan():
    X = load_digits().data[:300].copy()
    rng = np.random.default_rng(0)
    X[rng.random(X.shape) < 0.1] = np.nan  # training on incomplete data, too
    return X


def _fit(estimator, *args, strategy=None, **kwargs):
    if strategy is None:
        return estimator.fit(*args, **kwargs)
    with strategy.scope():
        return estimator.fit(*args, **kwargs)


def _replicas(estimator):
    return estimator._learner.parallel.n_replicas


GENERATIVE = dict(max_epochs=2, batch_size=64, sum_channels=8, tol=None, random_state=0)


@pytest.mark.parametrize("learning,em_update", [
    ("hard_em_unweighted", "epoch"), ("hard_em_unweighted", "online"), ("hard_em", "epoch"),
    ("soft_em", "epoch"), ("gradient", "epoch")])
def test_generative_training_matches_single_device(strategy, digits_with_nan, learning,
                                                   em_update):
    params = dict(GENERATIVE, learning=learning, em_update=em_update)
    single = DGCSPNDensityEstimator(**params).fit(digits_with_nan)
    mirrored = _fit(DGCSPNDensityEstimator(**params), digits_with_nan, strategy=strategy)
    assert _replicas(single) == 1 and _replicas(mirrored) == 2
    for a, b in zip(single.network_weights_, mirrored.network_weights_):
        if learning.startswith("hard"):
            # Counts of whole samples: sums of integers are exact in any order.
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(single.history_, mirrored.history_, rtol=1e-5)
    assert single.history_[-1] != pytest.approx(single.history_[0])  # it did learn


def test_partial_fit_matches_single_device_and_moves_between_strategies(strategy,
                                                                        digits_with_nan):
    X = digits_with_nan
    single = DGCSPNDensityEstimator(**GENERATIVE)
    mixed = DGCSPNDensityEstimator(**GENERATIVE)
    for i, chunk in enumerate(np.array_split(X, 3)):
        single.partial_fit(chunk)
        if i == 1:  # the middle chunk on two replicas, the others on one device
            with strategy.scope():
                mixed.partial_fit(chunk)
            assert _replicas(mixed) == 2
        else:
            mixed.partial_fit(chunk)
            assert _replicas(mixed) == 1
    for a, b in zip(single.network_weights_, mixed.network_weights_):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)


def test_classifier_training_matches_single_device_with_dropout(strategy, digits_split):
    X_train, X_test, y_train, _ = digits_split
    params = dict(max_epochs=2, sum_channels=8, n_components=8, batch_size=64,
                  product_dropout=0.2, input_dropout=0.2, random_state=0)
    weight = np.linspace(0.5, 1.5, len(y_train))
    single = DGCSPNClassifier(**params).fit(X_train, y_train, sample_weight=weight)
    mirrored = _fit(DGCSPNClassifier(**params), X_train, y_train, sample_weight=weight,
                    strategy=strategy)
    assert _replicas(mirrored) == 2
    # Adam divides by sqrt(v): float rounding of the all-reduce grows a little per step.
    for a, b in zip(single.network_weights_, mirrored.network_weights_):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(single.history_["loss"], mirrored.history_["loss"], rtol=1e-4)
    np.testing.assert_array_equal(single.predict(X_test), mirrored.predict(X_test))


# Slow (20 s of 20 epochs): the tests above already show that two replicas train the same
# model as one device, whose accuracy test_classifier.py checks.
@pytest.mark.slow
def test_classifier_digits_accuracy_on_two_replicas(strategy, digits_split):
    """The suite's single-device accuracy bar (test_classifier.py), on two replicas."""
    X_train, X_test, y_train, y_test = digits_split
    clf = _fit(DGCSPNClassifier(max_epochs=20, random_state=0), X_train, y_train,
               strategy=strategy)
    assert _replicas(clf) == 2
    assert clf.score(X_test, y_test) >= 0.95


def test_batch_smaller_than_replicas(strategy, digits_with_nan):
    X = digits_with_nan[:5]
    params = dict(GENERATIVE, batch_size=1, max_epochs=1)
    single = DGCSPNDensityEstimator(**params).fit(X)
    mirrored = _fit(DGCSPNDensityEstimator(**params), X, strategy=strategy)
    for a, b in zip(single.network_weights_, mirrored.network_weights_):
        np.testing.assert_array_equal(a, b)


def test_pickle_has_no_strategy_and_loads_on_one_device(strategy, digits_split):
    X_train, X_test, y_train, _ = digits_split
    clf = _fit(DGCSPNClassifier(max_epochs=1, sum_channels=4, n_components=4,
                                random_state=0), X_train, y_train, strategy=strategy)
    expected = clf.predict_proba(X_test)
    with strategy.scope():  # prediction inside the scope gives the same answers
        np.testing.assert_allclose(clf.predict_proba(X_test), expected, rtol=1e-6)
    blob = pickle.dumps(clf)
    for marker in (b"Mirrored", b"distribute", b"tensorflow"):
        assert marker not in blob
    loaded = pickle.loads(blob)
    assert getattr(loaded, "_strategy", None) is None
    np.testing.assert_allclose(loaded.predict_proba(X_test), expected, rtol=1e-6)
    # Warm-started training of the unpickled model runs on one device.
    loaded.set_params(warm_start=True, max_epochs=1).fit(X_train, y_train)
    assert _replicas(loaded) == 1


def test_imputer_under_strategy(strategy, digits_with_nan):
    X = digits_with_nan
    with strategy.scope():
        imputer = DGCSPNImputer(max_epochs=1, sum_channels=8, random_state=0).fit(X)
        completed = imputer.transform(X)
    assert _replicas(imputer) == 2
    assert not np.isnan(completed).any()
    observed = ~np.isnan(X)
    np.testing.assert_array_equal(completed[observed], X[observed])


def test_xla_classifier_is_refused_under_a_strategy(strategy, digits_split):
    X_train, _, y_train, _ = digits_split
    with pytest.raises(ValueError, match="jit_compile=True is not available under a "
                                         "tf.distribute strategy"):
        _fit(DGCSPNClassifier(jit_compile=True, max_epochs=1, sum_channels=4,
                              n_components=4), X_train[:64], y_train[:64], strategy=strategy)


def test_unsupported_strategy_is_refused(digits_with_nan):
    central = getattr(tf.distribute.experimental, "CentralStorageStrategy", None)
    if central is None:
        pytest.skip("CentralStorageStrategy not available in this TensorFlow")
    with central().scope():
        # The public names, as a user types them.
        with pytest.raises(ValueError, match="unsupported tf.distribute strategy "
                                             "CentralStorageStrategy; skspn trains under "
                                             "MirroredStrategy, MultiWorkerMirroredStrategy, "
                                             "OneDeviceStrategy"):
            DGCSPNDensityEstimator(**GENERATIVE).fit(digits_with_nan)


def test_one_device_strategy(digits_with_nan):
    params = dict(GENERATIVE, max_epochs=1)
    single = DGCSPNDensityEstimator(**params).fit(digits_with_nan)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        one = DGCSPNDensityEstimator(**params).fit(digits_with_nan)
    for a, b in zip(single.network_weights_, one.network_weights_):
        np.testing.assert_array_equal(a, b)


def test_a_second_strategy_whose_all_reduces_collide_gets_a_clear_error():
    """Two ``MirroredStrategy`` objects in one process number their all-reduces alike, and
    TensorFlow aborts when the second's differ in shape from the first's (TensorFlow issue
    #62790); the fit then says so and what to do, instead of TensorFlow's collective-ops
    error. In a fresh process: the abort lasts for the life of the process."""
    script = textwrap.dedent("""
        import skspn.core
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from sklearn.datasets import load_digits
        from skspn import DGCSPNClassifier, DGCSPNImputer
        X, y = load_digits(return_X_y=True)
        X, y = X[:100], y[:100]
        devices = ["/cpu:0", "/cpu:1"]
        with tf.distribute.MirroredStrategy(devices).scope():
            DGCSPNClassifier(max_epochs=1, sum_channels=4, random_state=0).fit(X, y)
        imputer = DGCSPNImputer(max_epochs=1, sum_channels=8, random_state=0)
        try:
            with tf.distribute.MirroredStrategy(devices).scope():
                imputer.fit(X)
        except RuntimeError as error:
            assert "Create one strategy and fit every model" in str(error), error
            assert "said: Collective ops is aborted by: Shape mismatch" in str(error), error
            assert not hasattr(imputer, "n_features_in_")
            print("clear error")
        else:
            print("no collision")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "clear error", result.stdout
