"""scikit-learn's own estimator checks on all three estimators (small, fast settings)."""

import functools

import pytest
from sklearn.utils.estimator_checks import (check_param_validation, estimator_checks_generator,
                                            parametrize_with_checks)

from skspn import DGCSPNClassifier, DGCSPNDensityEstimator, DGCSPNImputer

# The checks use tabular toy data (2-5 features): per-feature standardisation there,
# since the paper's per-image standardisation maps every 2-feature row to (-1, 1) or
# (1, -1); and a one-hot first product, whose channel combinations form a grid of
# Gaussians over the features (depthwise would tie all features to one component).
ESTIMATORS = [
    # 8 epochs at a high learning rate still pass check_classifiers_train (accuracy > 0.83)
    # and cost less than 20 epochs at the default 1e-2.
    DGCSPNClassifier(max_epochs=8, learning_rate=3e-2, sum_channels=4, n_components=4,
                     batch_size=32, first_product="one_hot", standardize="feature",
                     random_state=0),
    DGCSPNDensityEstimator(max_epochs=2, sum_channels=4, random_state=0),
    DGCSPNImputer(max_epochs=2, sum_channels=4, random_state=0),
]


@parametrize_with_checks(ESTIMATORS,
                         expected_failed_checks=lambda est: est._expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# The imputer with several networks holds fitted single-network imputers instead of one
# network. Its checks cost a few seconds each (every fit builds and traces two networks):
# the default run keeps those about fitted state (refit, pickling, parameters, unfitted
# use); the input-format checks, which go through the same validation as with one network,
# run with the slow ones.
ENSEMBLE = DGCSPNImputer(n_networks=2, max_epochs=1, sum_channels=4, random_state=0)
ENSEMBLE_DEFAULT_CHECKS = {
    "check_fit_idempotent", "check_estimators_pickle", "check_n_features_in_after_fitting",
    "check_dont_overwrite_parameters", "check_estimators_overwrite_params",
    "check_fit_check_is_fitted", "check_estimators_unfitted", "check_dict_unchanged",
    "check_no_attributes_set_in_init", "check_set_params", "check_estimators_fit_returns_self",
}


def _check_name(check):
    return (check.func if isinstance(check, functools.partial) else check).__name__


def _ensemble_checks():
    for estimator, check in estimator_checks_generator(
            ENSEMBLE, expected_failed_checks=ENSEMBLE._expected_failed_checks, mark="xfail"):
        name = _check_name(check)
        marks = () if name in ENSEMBLE_DEFAULT_CHECKS else (pytest.mark.slow,)
        yield pytest.param(estimator, check, marks=marks, id=name)


@pytest.mark.parametrize("estimator, check", list(_ensemble_checks()))
def test_sklearn_compatible_with_several_networks(estimator, check):
    check(estimator)


# scikit-learn runs check_param_validation on its own estimators only (not through
# parametrize_with_checks): every parameter has a constraint, every constraint a
# parameter, and an invalid value of each is refused by fit and the other methods.
@pytest.mark.parametrize("estimator", ESTIMATORS + [ENSEMBLE],
                         ids=lambda e: f"{type(e).__name__}-{getattr(e, 'n_networks', 1)}")
def test_parameter_constraints_match_the_parameters(estimator):
    check_param_validation(type(estimator).__name__, estimator)
