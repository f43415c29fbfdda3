"""The scikit-learn contract beyond check_estimator: composition, persistence,
determinism, progress output, pandas, bad input and numerical robustness."""

import gc
import os
import pickle
import pickletools
import subprocess
import sys
import textwrap
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler

from skspn import DGCSPNClassifier, DGCSPNDensityEstimator, DGCSPNImputer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(max_epochs=1, sum_channels=4, random_state=0)
SMALL_CLF = dict(max_epochs=1, sum_channels=8, n_components=8, random_state=0)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400], y[:400]


def _all_estimators():
    return [DGCSPNClassifier(**SMALL_CLF), DGCSPNDensityEstimator(**SMALL),
            DGCSPNImputer(**SMALL)]


def _fit(est, X, y):
    return est.fit(X, y) if isinstance(est, DGCSPNClassifier) else est.fit(X)


# --------------------------------------------------------------------------- composition


def test_grid_search_classifier(digits):
    # n_jobs=2: the candidates are pickled to worker processes and fitted there; the
    # density grid search below covers the in-process (n_jobs=None) path.
    X, y = digits
    grid = GridSearchCV(DGCSPNClassifier(max_epochs=1, n_components=8, random_state=0),
                        {"depth": [3, 4], "sum_channels": [4, 8]}, cv=2, n_jobs=2)
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    assert grid.best_estimator_.predict(X[:5]).shape == (5,)


def test_grid_search_density(digits):
    X, _ = digits
    grid = GridSearchCV(DGCSPNDensityEstimator(max_epochs=1, random_state=0),
                        {"depth": [3, 4], "sum_channels": [2, 4]}, cv=2)
    grid.fit(X)
    scores = grid.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all()
    assert len(set(np.round(scores, 6))) > 1  # the settings really differ


def test_pipeline_and_cross_val_score(digits):
    X, y = digits
    pipe = make_pipeline(MinMaxScaler(), DGCSPNClassifier(max_epochs=3, random_state=0))
    scores = cross_val_score(pipe, X, y, cv=2)
    assert scores.shape == (2,) and np.all(scores > 0.3)  # chance is 0.1
    imp_pipe = make_pipeline(DGCSPNImputer(**SMALL), FunctionTransformer(np.round))
    X_missing = X[:10].copy()
    X_missing[:, 40:] = np.nan
    out = imp_pipe.fit(X).transform(X_missing)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("est", _all_estimators(), ids=lambda e: type(e).__name__)
def test_clone_is_unfitted_copy(digits, est):
    X, y = digits
    fitted = _fit(clone(est), X[:100], y[:100])
    copy = clone(fitted)
    assert copy.get_params() == est.get_params()
    assert not hasattr(copy, "network_weights_")


# --------------------------------------------------------------------------- persistence


def _outputs(est, X):
    if isinstance(est, DGCSPNClassifier):
        return est.predict_proba(X)
    if isinstance(est, DGCSPNImputer):
        X = X.copy()
        X[:, 32:] = np.nan
        return est.transform(X)
    return est.score_samples(X)


def test_pickle_round_trip_in_fresh_process(tmp_path, digits):
    # All three estimators in one child process: starting Python + TensorFlow dominates.
    X, y = digits
    paths, expected, names = [], [], []
    for i, est in enumerate(_all_estimators()):
        est = _fit(est, X[:200], y[:200])
        paths.append(str(tmp_path / f"model{i}.joblib"))
        joblib.dump(est, paths[-1])
        expected.append(_outputs(est, X[200:230]))
        names.append(type(est).__name__)
    np.save(tmp_path / "X.npy", X[200:230])
    script = textwrap.dedent(f"""
        import sys, joblib, numpy as np
        sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
        from test_contract import _outputs
        X = np.load({str(tmp_path / 'X.npy')!r})
        for i, path in enumerate({paths!r}):
            np.save({str(tmp_path)!r} + f"/out{{i}}.npy", _outputs(joblib.load(path), X))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=300)
    for i, (name, want) in enumerate(zip(names, expected)):
        got = np.load(tmp_path / f"out{i}.npy")
        assert np.array_equal(got, want), name  # bit-identical


def test_pickle_holds_no_tensorflow_objects(digits):
    X, y = digits
    est = DGCSPNClassifier(**SMALL_CLF).fit(X[:100], y[:100])
    est.predict(X[:3])  # builds compiled ops, which must not be pickled
    payload = pickle.dumps(est)
    modules = {arg.split(" ")[0] for op, arg, _ in pickletools.genops(payload)
               if op.name in ("GLOBAL", "STACK_GLOBAL") and isinstance(arg, str)}
    modules |= {arg for op, arg, _ in pickletools.genops(payload)
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE") and isinstance(arg, str)
                and arg.startswith(("tensorflow", "keras"))}
    assert not any(m.startswith(("tensorflow", "keras")) for m in modules), modules
    loaded = pickle.loads(payload)
    assert np.array_equal(loaded.predict_proba(X[:5]), est.predict_proba(X[:5]))


def test_pickle_from_incompatible_version_is_refused(digits):
    X, _ = digits
    est = DGCSPNDensityEstimator(**SMALL).fit(X[:50])
    state = est.__getstate__()
    state["_skspn_version"] = "0.0.1"
    fresh = DGCSPNDensityEstimator.__new__(DGCSPNDensityEstimator)
    with pytest.raises(ValueError, match="incompatible"):
        fresh.__setstate__(state)


def test_fitted_estimator_keeps_training_after_unpickling(digits):
    X, y = digits
    est = DGCSPNClassifier(warm_start=True, **SMALL_CLF).fit(X[:200], y[:200])
    loaded = pickle.loads(pickle.dumps(est))
    loaded.fit(X[:200], y[:200])
    assert loaded.n_iter_ == 2


# --------------------------------------------------------------------------- determinism


def test_architecture_changed_after_fit(digits):
    X, y = digits
    clf = DGCSPNClassifier(**SMALL_CLF, warm_start=True).fit(X[:200], y[:200])
    expected = clf.predict_proba(X[:5])
    clf.set_params(sum_channels=4, n_components=2)
    # Queries answer with the fitted model, live or unpickled (the unpickled one was
    # rebuilt from the new parameters and failed on the weights' shapes).
    assert np.allclose(clf.predict_proba(X[:5]), expected)
    assert np.allclose(pickle.loads(pickle.dumps(clf)).predict_proba(X[:5]), expected)
    # Training on is refused (warm_start ignored the change silently).
    with pytest.raises(ValueError, match="sum_channels, n_components changed by set_params"):
        clf.fit(X[:200], y[:200])
    with pytest.raises(ValueError, match="changed by set_params"):
        clf.partial_fit(X[:200], y[:200])
    clf.set_params(sum_channels=[8], n_components=8).fit(X[:200], y[:200])  # the same net
    est = DGCSPNDensityEstimator(**SMALL).fit(X)
    with pytest.raises(ValueError, match="learning .* changed by set_params"):
        est.set_params(learning="gradient").partial_fit(X)
    est.set_params(learning="hard_em").partial_fit(X)  # counts either way
    ensemble = DGCSPNImputer(**SMALL, n_networks=2).fit(X)
    with pytest.raises(ValueError, match="sum_channels changed by set_params"):
        ensemble.set_params(sum_channels=8).partial_fit(X)


def test_interrupted_first_query_of_an_unpickled_model(digits, monkeypatch):
    from skspn.core.network import DGCSPN

    X, y = digits
    for model, query in ((DGCSPNClassifier(**SMALL_CLF).fit(X[:200], y[:200]),
                          "predict_proba"),
                         (DGCSPNImputer(**SMALL).fit(X[:200]), "score_samples")):
        blob = pickle.dumps(model)
        expected = getattr(pickle.loads(blob), query)(X[200:220])
        unpickled = pickle.loads(blob)
        set_weights = DGCSPN.set_weights

        def interrupted(network, weights):  # Ctrl-C while the weights are being loaded
            monkeypatch.setattr(DGCSPN, "set_weights", set_weights)
            raise KeyboardInterrupt

        monkeypatch.setattr(DGCSPN, "set_weights", interrupted)
        with pytest.raises(KeyboardInterrupt):
            getattr(unpickled, query)(X[200:220])
        # The network with its initial weights was kept, answered every later query and
        # was pickled.
        assert np.array_equal(getattr(unpickled, query)(X[200:220]), expected)
        assert np.array_equal(getattr(pickle.loads(pickle.dumps(unpickled)), query)(X[200:220]),
                              expected)


@pytest.mark.parametrize("make", [
    lambda: DGCSPNClassifier(**SMALL_CLF, batch_size=16),
    lambda: DGCSPNDensityEstimator(**SMALL, batch_size=16),
    lambda: DGCSPNDensityEstimator(**SMALL, batch_size=16, learning="gradient"),
    lambda: DGCSPNImputer(**SMALL, batch_size=16, n_networks=2),
])
def test_interrupted_partial_fit_keeps_the_model(digits, make, monkeypatch):
    from skspn.core import learning

    X, y = digits
    model = make()
    is_classifier = isinstance(model, DGCSPNClassifier)
    args = (X[:200], y[:200]) if is_classifier else (X[:200],)
    model.partial_fit(*args, **({"classes": np.unique(y)} if is_classifier else {}))
    expected = pickle.loads(pickle.dumps(model))
    query = "predict_proba" if is_classifier else "score_samples"
    # Ctrl-C in the middle of the pass (the imputer's: in its second network, after the
    # first one was updated).
    learner = learning.GradientLearner if is_classifier or model.learning == "gradient" \
        else learning.EMLearner
    step, calls = learner.step, []

    def interrupted(self, *step_args, **step_kwargs):
        calls.append(1)
        if len(calls) == (20 if isinstance(model, DGCSPNImputer) else 5):
            raise KeyboardInterrupt
        return step(self, *step_args, **step_kwargs)

    monkeypatch.setattr(learner, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.partial_fit(*args)
    monkeypatch.setattr(learner, "step", step)
    # The live network had taken the first batches: queries and pickles disagreed with
    # network_weights_ and history_.
    assert model.n_iter_ == expected.n_iter_ and model.history_ == expected.history_
    for fitted in (model, pickle.loads(pickle.dumps(model))):
        assert np.array_equal(getattr(fitted, query)(X[200:220]),
                              getattr(expected, query)(X[200:220]))
    model.partial_fit(*args)  # and it trains on


@pytest.mark.parametrize("make", [
    lambda s: DGCSPNDensityEstimator(**SMALL, standardize=None, leaf_scale=s),
    lambda s: DGCSPNClassifier(**SMALL_CLF, standardize=None, leaf_scale=s),
])
def test_leaf_scales_below_the_floor_are_honoured(digits, make):
    # Data in small units with standardize=None need narrow leaves; a leaf_scale below
    # the Normal leaves' default floor (0.01) was silently raised to it.
    X, y = digits
    X = X[:200] * 1e-3
    fits = {s: make(s).fit(X, y[:200]) for s in (0.001, 0.005)}
    for s, est in fits.items():
        np.testing.assert_allclose(est._get_ops().network.leaf.scale.numpy(), s, rtol=1e-3)
    assert not np.allclose(fits[0.001].score_samples(X[:5]), fits[0.005].score_samples(X[:5]))
    # The floor is the fitted one after a set_params and through a pickle.
    est = fits[0.001]
    before = est.score_samples(X[:5])
    est.set_params(leaf_scale=1.0)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).score_samples(X[:5]), before)


def test_interrupted_warm_fit_keeps_the_model_and_its_history(digits, monkeypatch):
    # Interrupted in its second epoch, after the first had appended to history_ (a dict
    # of lists for the classifier, whose lists were once kept by reference, not copied).
    from skspn.core import learning

    X, y = digits
    model = DGCSPNClassifier(**SMALL_CLF, batch_size=16, warm_start=True)
    model.fit(X[:200], y[:200])
    expected = pickle.loads(pickle.dumps(model))
    step, calls = learning.GradientLearner.step, []

    def interrupted(self, *step_args, **step_kwargs):
        calls.append(1)
        if len(calls) == 20:  # 13 batches per epoch
            raise KeyboardInterrupt
        return step(self, *step_args, **step_kwargs)

    monkeypatch.setattr(learning.GradientLearner, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.set_params(max_epochs=3).fit(X[:200], y[:200])
    monkeypatch.setattr(learning.GradientLearner, "step", step)
    assert model.n_iter_ == expected.n_iter_ == 1
    assert model.history_ == expected.history_
    np.testing.assert_array_equal(model.predict_proba(X[200:220]),
                                  expected.predict_proba(X[200:220]))


def test_dropped_models_release_their_tensorflow_graphs(digits):
    from skspn.core.learning import _gradient_registry, _release_collected

    # TensorFlow keeps the gradient function of every traced tf.custom_gradient, and with
    # it the graph, in a global registry: each fit, grid-search candidate or unpickled
    # model held 3-10 MiB until the process ended.
    registry = _gradient_registry()
    assert registry is not None, "TensorFlow's gradient registry moved: check for the leak"
    X, y = digits
    X_missing = X[:5].copy()
    X_missing[:, 32:] = np.nan
    kept = DGCSPNClassifier(**SMALL_CLF).fit(X[:100], y[:100])
    kept_density = DGCSPNDensityEstimator(**SMALL).fit(X[:100])

    def fits_and_queries():
        clf = DGCSPNClassifier(**SMALL_CLF).fit(X[:100], y[:100])
        pickle.loads(pickle.dumps(clf)).predict_proba(X_missing)
        est = DGCSPNDensityEstimator(**SMALL).fit(X[:100])
        for method in ("marginal", "mpe", "sample"):
            est.impute(X_missing, method=method)
        est.partial_fit(X[:100])
        DGCSPNImputer(**SMALL, n_networks=2).fit(X[:100]).transform(X_missing)

    # Collected networks' names are removed by the next trace; here at once, so that the
    # count does not depend on which networks of earlier tests were collected when.
    fits_and_queries()
    gc.collect()
    _release_collected()
    n_registered = len(registry)
    fits_and_queries()
    gc.collect()
    _release_collected()
    assert len(registry) == n_registered
    # The models still alive keep theirs: they still query and train (tracing anew).
    kept.partial_fit(X[100:200], y[100:200])
    assert kept.predict_proba(X_missing).shape == (5, 10)
    kept_density.partial_fit(X[100:200])
    assert np.isfinite(kept_density.impute(X_missing)).all()


@pytest.mark.parametrize("n_networks", [1, 2])
def test_leaf_changed_after_fit(n_networks):
    rng = np.random.RandomState(0)
    codes = rng.randint(0, 3, size=(120, 16)).astype(float)
    query = codes[:4].copy()
    query[:, 8:] = np.nan
    imputer = DGCSPNImputer(**SMALL, leaf="categorical", n_networks=n_networks).fit(codes)
    scores, completed = imputer.score_samples(codes[:4]), imputer.impute(query)
    # The data check and the scaling follow the fitted leaf: with leaf='normal' the codes
    # were standardised per row and fed to the categorical network (imputing non-codes),
    # and with 'bernoulli' valid codes were refused.
    for leaf in ("normal", "bernoulli"):
        imputer.set_params(leaf=leaf)
        assert np.array_equal(imputer.score_samples(codes[:4]), scores)
        assert np.array_equal(imputer.impute(query), completed)
        assert np.array_equal(pickle.loads(pickle.dumps(imputer)).impute(query), completed)
    with pytest.raises(ValueError, match="leaf / n_categories changed by set_params"):
        imputer.partial_fit(codes)
    binary = DGCSPNDensityEstimator(**SMALL, leaf="bernoulli").fit(codes > 0)
    scores = binary.score_samples(codes[:4] > 0)
    binary.set_params(leaf="categorical")  # had no n_categories_ to check codes against
    assert np.array_equal(binary.score_samples(codes[:4] > 0), scores)
    # Training on with another leaf is refused as such (partial_fit to 'categorical' was a
    # KeyError), and a refit takes the new leaf, without the old one's n_categories_.
    with pytest.raises(ValueError, match="^leaf / n_categories changed by set_params"):
        binary.partial_fit(codes > 0)
    assert binary.fit(codes).n_categories_ == 3
    assert not hasattr(binary.set_params(leaf="normal").fit(codes), "n_categories_")


@pytest.mark.parametrize("make", [lambda s: DGCSPNDensityEstimator(max_epochs=1, sum_channels=4,
                                                                   random_state=s),
                                  lambda s: DGCSPNDensityEstimator(max_epochs=1, sum_channels=4,
                                                                   learning="gradient",
                                                                   random_state=s)])
def test_same_seed_same_model_different_seed_differs(digits, make):
    X, _ = digits
    a, b, c = make(1).fit(X), make(1).fit(X), make(2).fit(X)
    assert all(np.array_equal(u, v) for u, v in zip(a.network_weights_, b.network_weights_))
    assert np.array_equal(a.score_samples(X[:20]), b.score_samples(X[:20]))
    assert not all(np.array_equal(u, v) for u, v in zip(a.network_weights_, c.network_weights_))


# --------------------------------------------------------------------------- progress


def test_verbose_progress(digits, capsys, monkeypatch):
    X, y = digits
    DGCSPNDensityEstimator(verbose=0, **SMALL).fit(X)
    assert capsys.readouterr().out == ""
    many_batches = dict(verbose=1, max_epochs=2, tol=None, sum_channels=4, batch_size=16,
                        random_state=0)
    DGCSPNDensityEstimator(**many_batches).fit(X)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "log_likelihood=" in out
    # The progress bar (redrawn with \r) only on a terminal: in a log it was one long line.
    assert "batches" not in out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    DGCSPNDensityEstimator(**many_batches).fit(X)
    assert "batches" in capsys.readouterr().out
    monkeypatch.undo()
    DGCSPNClassifier(verbose=1, **SMALL_CLF).fit(X, y)
    assert "loss=" in capsys.readouterr().out
    DGCSPNDensityEstimator(verbose=1, **SMALL).partial_fit(X[:50])  # a few batches, no bar
    assert "epoch 1/1" in capsys.readouterr().out


def test_import_prints_nothing():
    result = subprocess.run([sys.executable, "-c", "import skspn, skspn.core"],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={k: v for k, v in os.environ.items()
                                 if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == "", result.stderr


# --------------------------------------------------------------------------- pandas


def test_dataframe_input_and_pandas_output(digits):
    pd = pytest.importorskip("pandas")
    X, y = digits
    df = pd.DataFrame(X[:100], columns=[f"px{i}" for i in range(64)])
    clf = DGCSPNClassifier(**SMALL_CLF).fit(df, y[:100])
    assert list(clf.feature_names_in_) == list(df.columns)
    imp = DGCSPNImputer(**SMALL).set_output(transform="pandas")
    df_missing = df.copy()
    df_missing.iloc[:, 40:] = np.nan
    out = imp.fit(df).transform(df_missing)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(df.columns)
    assert list(imp.get_feature_names_out()) == list(df.columns)
    assert not out.isna().any().any()
    # Image arrays come back as a 2-D DataFrame (pandas cannot hold 3-D).
    images = np.asarray(df_missing).reshape(-1, 8, 8)
    out = imp.transform(images[:3])
    assert isinstance(out, pd.DataFrame) and out.shape == (3, 64)
    assert np.array_equal(out.to_numpy()[:, :40], images[:3].reshape(3, 64)[:, :40])
    assert imp.set_output(transform="default").transform(images[:3]).shape == (3, 8, 8)
    imp.set_output(transform="pandas")
    # A placeholder in a DataFrame is read as missing; NaN then is bad input.
    placeholder = DGCSPNImputer(**SMALL, missing_values=-1).fit(df)
    out = placeholder.transform(df_missing.fillna(-1))
    assert (np.asarray(out)[:, 40:] != -1).all()
    with pytest.raises(ValueError, match="contains NaN"):
        placeholder.transform(df_missing)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("est", _all_estimators(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("X, match", [
    (np.array([[1.0, np.inf, 2.0, 3.0]] * 5), "infinity.*; use NaN for missing values"),
    (np.array([["a", "b"], ["c", "d"]], dtype=object), "could not convert|numeric"),
    (np.zeros((0, 4)), "0 sample"),
    (np.full((5, 4), np.nan), "no observed"),
    (np.array([[1e39, 0.0, 2.0, 3.0]] * 5), "beyond float32"),
])
def test_bad_fit_input(est, X, match):
    y = np.arange(len(X)) % 2
    with pytest.raises(ValueError, match=match):
        _fit(est, X, y)


def test_one_sample():
    with pytest.raises(ValueError, match="one class"):
        DGCSPNClassifier().fit(np.zeros((1, 4)), [0])
    # A density can be fitted to one sample; its score stays finite.
    est = DGCSPNDensityEstimator(**SMALL).fit(np.arange(4.0)[None])
    assert np.isfinite(est.score_samples(np.arange(4.0)[None])).all()


@pytest.mark.parametrize("est", _all_estimators(), ids=lambda e: type(e).__name__)
def test_use_before_fit(est):
    method = {"DGCSPNClassifier": "predict", "DGCSPNDensityEstimator": "score_samples",
              "DGCSPNImputer": "transform"}[type(est).__name__]
    with pytest.raises(NotFittedError):
        getattr(est, method)(np.zeros((2, 64)))


@pytest.mark.parametrize("est", _all_estimators(), ids=lambda e: type(e).__name__)
def test_wrong_feature_count(digits, est):
    X, y = digits
    est = _fit(est, X[:100], y[:100])
    method = {"DGCSPNClassifier": "predict", "DGCSPNDensityEstimator": "score_samples",
              "DGCSPNImputer": "transform"}[type(est).__name__]
    with pytest.raises(ValueError, match="64 features"):
        getattr(est, method)(np.zeros((2, 63)))


@pytest.mark.parametrize("est", _all_estimators() + [DGCSPNImputer(n_networks=2, **SMALL)],
                         ids=lambda e: f"{type(e).__name__}-{e.get_params().get('n_networks', 1)}")
def test_parameters_set_after_fit_are_validated_by_queries(digits, est):
    """Queries read ``standardize``, ``batch_size`` (and the imputer's ``missing_values``
    and ``completion``) as set now, so they validate them: an invalid value set after fit
    is an error naming it, not a silently different answer."""
    X, y = digits
    est = _fit(est, X[:100], y[:100])
    X_query = X[100:104].copy()
    X_query[:, 32:] = np.nan
    queries = {
        "DGCSPNClassifier": [lambda: est.predict_proba(X_query),
                             lambda: est.score_samples(X_query)],
        "DGCSPNDensityEstimator": [lambda: est.score_samples(X_query),
                                   lambda: est.impute(X_query),
                                   lambda: est.sample(2, random_state=0)],
        "DGCSPNImputer": [lambda: est.transform(X_query), lambda: est.score_samples(X_query)],
    }[type(est).__name__]
    before = [q() for q in queries]
    bad = [dict(standardize="bogus"), dict(batch_size=0)]
    if isinstance(est, DGCSPNImputer):
        bad += [dict(completion="sample"), dict(missing_values="NA")]
    for params in bad:
        (name, value), = params.items()
        valid = est.get_params()[name]
        est.set_params(**params)
        for query in queries:
            with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
                query()
        est.set_params(**{name: valid})
    for query, answer in zip(queries, before):
        np.testing.assert_array_equal(query(), answer)


@pytest.mark.parametrize("params, match", [
    (dict(sum_channels=0), "sum_channels"),
    (dict(sum_channels=[4, -1, 4]), "sum_channels must be positive"),
    (dict(depth=20), "depth=20 is too large"),
    (dict(kernel_size=9), "kernel_size 9 is larger than the image"),
    (dict(image_shape=(5, 5)), "holds 25 values, but X has 64 features"),
    (dict(image_shape=(8.5, 8)), "image_shape must hold whole numbers"),
    (dict(sum_channels=[4.5]), "sum_channels must hold whole numbers"),
    (dict(sum_channels=[[4, 4]]), "sum_channels must hold whole numbers"),
    (dict(sum_channels=[True]), "sum_channels must hold whole numbers"),
    (dict(kernel_size=(1, 3)), "kernel_size must be an int >= 2 or .height, width."),
    (dict(kernel_size=(2, 3, 4)), "kernel_size must be an int >= 2 or .height, width."),
    (dict(kernel_size=(2.5, 3)), "kernel_size must hold whole numbers"),
    (dict(leaf="poisson"), "leaf"),
    (dict(learning="magic"), "learning"),
    (dict(standardize="global"), "standardize"),
    (dict(n_components=0), "n_components"),
])
def test_invalid_hyper_parameters(digits, params, match):
    X, _ = digits
    with pytest.raises(ValueError, match=match):
        DGCSPNDensityEstimator(max_epochs=1, **params).fit(X[:20])


def test_y_length_mismatch(digits):
    X, y = digits
    with pytest.raises(ValueError, match="samples"):
        DGCSPNClassifier(**SMALL_CLF).fit(X[:20], y[:19])


# --------------------------------------------------------------------------- robustness


def _finite_state(est):
    return all(np.isfinite(w).all() for w in est.network_weights_)


def test_constant_images():
    X = np.full((40, 16), 3.0)
    est = DGCSPNDensityEstimator(**SMALL).fit(X)
    assert _finite_state(est) and np.isfinite(est.score_samples(X)).all()
    clf = DGCSPNClassifier(**SMALL_CLF).fit(X, np.arange(40) % 2)
    assert _finite_state(clf) and np.isfinite(clf.predict_proba(X)).all()


def test_huge_values():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 16)) * 1e6
    for est in (DGCSPNDensityEstimator(**SMALL), DGCSPNImputer(**SMALL)):
        est.fit(X)
        assert _finite_state(est)
    assert np.isfinite(DGCSPNDensityEstimator(**SMALL).fit(X).score_samples(X)).all()
    clf = DGCSPNClassifier(**SMALL_CLF).fit(X, np.arange(40) % 2)
    assert _finite_state(clf) and np.isfinite(clf.predict_proba(X)).all()
    X_missing = X.copy()
    X_missing[:, 8:] = np.nan
    out = DGCSPNImputer(**SMALL).fit(X).transform(X_missing)
    assert np.isfinite(out).all()


def test_values_near_the_float32_limit():
    # Statistics in float64: squares of 1e20 overflow float32 (the scores were -inf).
    X = load_digits().data[:100] * 1e20
    est = DGCSPNDensityEstimator(**SMALL).fit(X)
    assert np.isfinite(est.score_samples(X[:5])).all()
    assert np.isfinite(est.feature_scale_).all()
    with pytest.raises(ValueError, match="beyond float32"):
        est.score_samples(X[:5] * 1e19)


def test_queries_far_outside_the_training_data(digits):
    # Values 1e10..1e25 training standard deviations out: the Normal leaves' squares
    # overflowed float32 (scores -inf, imputations NaN) and the classifier's rows summed to
    # n_classes (log(n_classes) lost to rounding) or were NaN.
    X, y = digits
    X, y = X[:300], y[:300]
    clf = DGCSPNClassifier(**SMALL_CLF, standardize="feature").fit(X, y)
    far = np.where(np.arange(64) == 5, 1e20, X[:3])
    for Q in (X[:3] * 1e10, X[:3] * 1e20, far):
        proba = clf.predict_proba(Q)
        assert np.isfinite(proba).all()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    imp = DGCSPNImputer(**SMALL, standardize="feature").fit(X)
    Q = X[:3].copy()
    Q[:, 40:] = np.nan
    Q[:, 3] = 1e25
    assert np.isfinite(imp.score_samples(Q)).all()
    assert np.isfinite(imp.transform(Q)).all()


def test_divergence_in_the_last_gradient_step_is_caught(digits):
    # The loss is measured before each update: a last step that diverged went unnoticed
    # and the fitted model scored -inf and imputed NaN.
    X = digits[0][:100]
    for call in ("fit", "partial_fit"):
        est = DGCSPNDensityEstimator(learning="gradient", learning_rate=50, max_epochs=1,
                                     random_state=0)
        with pytest.raises(ValueError, match="training diverged: the train log-likelihood "
                                             "after training"):
            getattr(est, call)(X)


def test_odd_inputs_get_clear_answers(digits):
    X, y = digits
    # A (nested) list of 2-D images is images, as a 3-D array is.
    images = [row.reshape(8, 8).tolist() for row in X[:60]]
    imp = DGCSPNImputer(**SMALL).fit(images)
    assert imp.image_shape_ == (8, 8, 1)
    assert imp.transform(images[:2]).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="0 images"):
        DGCSPNImputer(**SMALL).fit(np.zeros((0, 8, 8)))
    # NaN bounds made every completion NaN.
    for bound in (dict(min_value=np.nan), dict(max_value=np.r_[np.nan, np.ones(63)])):
        with pytest.raises(ValueError, match="must not be NaN"):
            DGCSPNImputer(**SMALL, **bound).fit(X[:60])
    # A NaN class was accepted and got a share of the probability.
    with pytest.raises(ValueError, match="classes: Input y contains NaN"):
        DGCSPNClassifier(**SMALL_CLF).partial_fit(X[:60], y[:60] % 2, classes=[0, 1, np.nan])
    # A NaN label: the error alone (as LogisticRegression), without a cast warning first.
    y_nan = np.where(np.arange(60) == 5, np.nan, y[:60])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="Input y contains NaN"):
            DGCSPNClassifier(**SMALL_CLF).fit(X[:60], y_nan)
        labels = y[:60].astype(str).astype(object)
        labels[5] = np.nan  # was a TypeError comparing NaN with the strings
        with pytest.raises(ValueError, match="Input contains NaN"):
            DGCSPNClassifier(**SMALL_CLF).fit(X[:60], labels)
    # Per-row standardisation of one or two features leaves little.
    with pytest.warns(UserWarning, match="with 2 it removes most of the information"):
        DGCSPNImputer(**SMALL).fit(X[:60, 20:22])
    # Unscaled data may be what diverged, not only the learning rate.
    est = DGCSPNDensityEstimator(**SMALL, learning="gradient", standardize=None).fit(X[:60])
    with pytest.raises(ValueError, match=r"lower learning_rate \(now 0.01\) or check X for "
                                         "extreme values"):
        est._check_finite_training(np.nan, "train log-likelihood")


def test_networks_too_large_to_allocate_are_refused(digits):
    # n_components=10**6 raised TensorFlow's ResourceExhaustedError with a graph trace
    # (or the kernel killed the process); the size is known before anything is built.
    X, y = digits
    # Terabytes, more than any test machine has (10**6 asked for 33 GB).
    for est in (DGCSPNDensityEstimator(n_components=10**8), DGCSPNImputer(n_components=10**8),
                DGCSPNClassifier(n_components=10**8)):
        with pytest.raises(ValueError, match="layer leaves would hold .* more than this "
                                             "machine's memory .* lower batch_size, "
                                             "n_components or sum_channels"):
            _fit(est, X[:200], y[:200])
        with pytest.raises(NotFittedError):
            est.predict(X[:2]) if hasattr(est, "predict") else est.score_samples(X[:2])
    with pytest.raises(ValueError, match="network would have .* weights"):
        DGCSPNDensityEstimator(sum_channels=10**5).fit(X[:200])
    # A batch of 512 of the paper's MNIST inpainting net (28 x 28, 4 components, sums of
    # 16; the throughput benchmark's largest) is allowed.
    paper = DGCSPNDensityEstimator(depth=6, batch_size=512)
    paper._validate_params()
    paper.image_shape_ = (28, 28, 1)
    paper._check_network_size(60000)


def test_a_failed_refit_leaves_the_estimator_unfitted(digits):
    # A fit that starts over replaced the fitted state piece by piece: a failure midway
    # left the old network with the new data's statistics (other answers, silently) or a
    # new feature count with the old network (errors from inside TensorFlow).
    X, y = digits
    X, y = X[:100], y[:100] % 2
    clf = DGCSPNClassifier(**SMALL_CLF, standardize="feature").fit(X, y)
    with pytest.raises(ValueError, match="training diverged"):
        clf.set_params(learning_rate=1e6).fit(X * 100 + 5, y)
    with pytest.raises(NotFittedError):
        clf.predict_proba(X[:3])
    clf.set_params(learning_rate=1e-2).fit(X, y)
    with pytest.raises(ValueError, match="only one class"):
        clf.fit(np.random.default_rng(0).random((4, 16)), [0, 0, 0, 0])
    with pytest.raises(NotFittedError):
        clf.predict(np.random.default_rng(0).random((4, 16)))
    density = DGCSPNDensityEstimator(**SMALL, leaf="bernoulli").fit((X > 8).astype(float))
    with pytest.raises(ValueError, match="only 0, 1"):
        density.fit(X[:, :16])
    with pytest.raises(NotFittedError):
        density.score_samples(X[:3, :16])
    imp = DGCSPNImputer(**SMALL).fit(X)
    with pytest.raises(ValueError, match="no observed"):
        imp.fit(np.full((5, 16), np.nan))
    with pytest.raises(NotFittedError):
        imp.transform(X[:3, :16])
    # Continued training that fails keeps the model it continued from.
    warm = DGCSPNClassifier(**SMALL_CLF, warm_start=True).fit(X, y)
    before = warm.predict_proba(X[:5])
    with pytest.raises(ValueError, match="not seen in the first fit"):
        warm.fit(X, y + 5)
    np.testing.assert_array_equal(warm.predict_proba(X[:5]), before)


def test_an_all_missing_feature_raises_no_numpy_warnings(digits):
    X = digits[0][:100].copy()
    X[:, 0] = np.nan
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.warns(UserWarning, match="no observed value"):
            est = DGCSPNDensityEstimator(**SMALL).fit(X)
    assert est.feature_mean_[0, 0, 0] == 0.0 and est.feature_scale_[0, 0, 0] == 1.0


@pytest.mark.parametrize("container", ["DataFrame", "object", "list", "float32"])
def test_observed_values_come_back_bit_for_bit(digits, container):
    # Observed entries must not pass through the network's float32 copy (they changed
    # by up to 1.7e-7 here, and by 1.0 for values near 1e8).
    pd = pytest.importorskip("pandas")
    X = digits[0][:100] * 1e7 + 0.123456789012345
    imp = DGCSPNImputer(**SMALL).fit(X)
    X_missing = X[:6].copy()
    X_missing[:, 40:] = np.nan
    if container == "float32":
        X_missing = X_missing.astype(np.float32)
    given = {"DataFrame": lambda a: pd.DataFrame(a), "object": lambda a: a.astype(object),
             "list": lambda a: [[None if np.isnan(v) else v for v in row] for row in a],
             "float32": lambda a: a}[container](X_missing)
    out = imp.transform(given)
    assert out.dtype == (np.float32 if container == "float32" else np.float64)
    assert np.array_equal(out[:, :40], X_missing[:, :40])
    est = DGCSPNDensityEstimator(**SMALL).fit(X)
    assert np.array_equal(est.impute(given)[:, :40], X_missing[:, :40])


def test_sample_standardisation_of_rows_without_a_scale(digits):
    # A row with nothing observed, one observed value or only equal ones has no scale of
    # its own; it takes the training rows' typical mean and scale, so its completion is on
    # X's scale (before: in standardised units, or centred on the lone value).
    X = digits[0]
    for n_networks in (1, 2):
        imp = DGCSPNImputer(**SMALL, n_networks=n_networks).fit(X)
        assert 0 < imp.typical_mean_ < 16 and 0 < imp.typical_scale_ < 16
        empty = imp.transform(np.full((1, 64), np.nan))
        assert empty.max() > 4 and empty.min() > -2, empty
        single = np.full((1, 64), np.nan)
        single[0, 10] = 16.0
        completed = imp.transform(single)
        assert completed[0, 10] == 16.0 and np.median(completed) < 8, completed
        blank_top = X[:20].copy()
        blank_top[:, :32] = 0.0
        blank_top[:, 32:] = np.nan
        assert np.median(imp.transform(blank_top)[:, 32:]) > 0.5


@pytest.mark.parametrize("est", _all_estimators(), ids=lambda e: type(e).__name__)
def test_batch_size_beyond_the_data_costs_no_more_than_the_data(digits, est, monkeypatch):
    # Training batches were padded up to batch_size: 10**6 ran out of memory.
    from skspn.core import learning
    seen = []
    for learner in (learning.EMLearner, learning.GradientLearner):
        step = learner.step

        def recording_step(self, x, *args, _step=step, **kwargs):
            seen.append(len(x))
            return _step(self, x, *args, **kwargs)
        monkeypatch.setattr(learner, "step", recording_step)
    X, y = digits
    _fit(est.set_params(batch_size=2**14), X[:200], y[:200])
    assert seen and max(seen) == 256


@pytest.mark.parametrize("make", [
    lambda: DGCSPNClassifier(learning_rate=100.0, max_epochs=2, random_state=0),
    lambda: DGCSPNDensityEstimator(learning="gradient", learning_rate=1e4, max_epochs=1,
                                   random_state=0)], ids=["classifier", "density"])
def test_diverged_training_raises_instead_of_predicting_nan(digits, make):
    X, y = digits
    est = make()
    with pytest.raises(ValueError, match="training diverged: .* lower learning_rate"):
        _fit(est, X[:200], y[:200])
    with pytest.raises(NotFittedError):  # nothing diverged is left to predict with
        est.score_samples(X[:3])


@pytest.mark.parametrize("make", [
    lambda: DGCSPNDensityEstimator(depth=1, **SMALL),
    lambda: DGCSPNClassifier(depth=1, first_product="one_hot", **SMALL_CLF)],
    ids=["density", "classifier"])
def test_one_hot_product_over_the_whole_image(digits, make):
    # depth=1 makes the first product's kernel the whole 8x8 image: 4**64 combinations,
    # whose codes overflow int64 (this failed in numpy). 256 distinct ones are drawn.
    X, y = digits
    est = _fit(make(), X[:100], y[:100])
    product = est._network.products[0]
    rows = product._subset_digits.T
    assert rows.shape == (256, 64) and len(np.unique(rows, axis=0)) == 256
    assert np.isfinite(est.score_samples(X[:5])).all()
    assert abs(est.score_samples(np.full((1, 64), np.nan))[0]) < 1e-4


def test_image_arrays_must_match_the_fitted_images():
    rng = np.random.default_rng(0)
    # image_shape disagreeing with the images of X (they were silently reshaped).
    with pytest.raises(ValueError, match="disagrees with the images of X, of shape .4, 16."):
        DGCSPNDensityEstimator(image_shape=(16, 4), **SMALL).fit(rng.random((20, 4, 16)))
    est = DGCSPNDensityEstimator(image_shape=(4, 16), **SMALL).fit(rng.random((20, 4, 16)))
    assert est.image_shape_ == (4, 16, 1)
    # A colour model takes no grey (n, H, W) arrays, whatever their size.
    colour = DGCSPNDensityEstimator(**SMALL).fit(rng.random((20, 4, 6, 3)))
    for shape in ((2, 8, 9), (2, 4, 18), (2, 6, 4, 3)):
        with pytest.raises(ValueError, match="fitted on images of shape .4, 6, 3."):
            colour.impute(rng.random(shape))
    assert colour.impute(rng.random((2, 4, 6, 3))).shape == (2, 4, 6, 3)


def test_channels_first_images_warn():
    rng = np.random.default_rng(0)
    # PyTorch-style (n, C, H, W) arrays would be fitted as 3 x 8 images of 8 channels or
    # 1 x 8 strips.
    for X, params in (((rng.random((20, 3, 8, 8))), {}),
                      ((rng.random((20, 1, 8, 8))), {}),
                      ((rng.random((20, 2, 8, 8))), {}),
                      ((rng.random((20, 192))), {"image_shape": (3, 8, 8)})):
        with pytest.warns(UserWarning, match=r"np.moveaxis\(X, 1, -1\)"):
            est = DGCSPNDensityEstimator(**SMALL, **params).fit(X)
        assert est.image_shape_ == (X.shape[1:] if X.ndim == 4 else (3, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DGCSPNDensityEstimator(**SMALL).fit(rng.random((20, 8, 8, 3)))
        DGCSPNDensityEstimator(**SMALL).fit(rng.random((20, 4, 6, 3)))
        DGCSPNDensityEstimator(**SMALL).fit(rng.random((20, 64)))
        # Strips and small images of a few channels (multichannel signals).
        DGCSPNDensityEstimator(**SMALL).fit(rng.random((20, 1, 50, 6)))
        DGCSPNDensityEstimator(**SMALL).fit(rng.random((20, 4, 4, 8)))
        DGCSPNDensityEstimator(**SMALL, image_shape=(1, 32, 6)).fit(rng.random((20, 192)))


def test_64x64_full_depth():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 64 * 64))
    est = DGCSPNDensityEstimator(depth=8, sum_channels=2, batch_size=8, max_epochs=1,
                                 random_state=0).fit(X)
    assert _finite_state(est)
    scores = est.score_samples(X[:2])
    assert np.isfinite(scores).all()


def test_sum_channels_lists_are_extended_or_cut_to_the_sum_layers():
    est = DGCSPNDensityEstimator(image_shape=(8, 8))
    est.image_shape_ = (8, 8, 1)
    n_sums = len(est.set_params(sum_channels=4)._plan("one_hot")[1])
    assert n_sums >= 2
    assert est.set_params(sum_channels=[8, 4])._plan("one_hot")[1] == [8] + [4] * (n_sums - 1)
    assert est.set_params(sum_channels=list(range(1, 30)))._plan("one_hot")[1] == list(
        range(1, n_sums + 1))


def test_shapes_may_be_numpy_arrays(digits):
    """``image_shape`` and ``kernel_size`` accept numpy arrays as they accept tuples and
    lists (e.g. ``X.shape[1:]`` of an image array turned into an array)."""
    X, _ = digits
    as_tuples = DGCSPNDensityEstimator(image_shape=(8, 8), kernel_size=(2, 2), **SMALL).fit(
        X[:50])
    as_arrays = DGCSPNDensityEstimator(image_shape=np.array([8, 8]),
                                       kernel_size=np.array([2, 2]), **SMALL).fit(X[:50])
    assert as_arrays.image_shape_ == as_tuples.image_shape_ == (8, 8, 1)
    np.testing.assert_array_equal(as_arrays.score_samples(X[50:52]),
                                  as_tuples.score_samples(X[50:52]))
    with pytest.raises(ValueError, match="image_shape must hold whole numbers"):
        DGCSPNDensityEstimator(image_shape=np.array([[8, 8]]), **SMALL).fit(X[:50])
