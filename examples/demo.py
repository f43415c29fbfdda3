"""skspn demo on scikit-learn's embedded digits (8x8 images, no download).

Fits the three estimators, prints what they achieve next to scikit-learn baselines, and
saves a picture of inpainted digits to examples/output/digits_inpainting.png.

Run with ``make demo`` (creates the virtual environment on first use).
"""

import argparse
import os
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.impute import KNNImputer, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skspn import DGCSPNClassifier, DGCSPNDensityEstimator, DGCSPNImputer
from skspn._png import tile_images, write_png

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output")


def hide(X, fraction, seed=0):
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < fraction] = np.nan
    return X


def main():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y,
                                                        random_state=0)
    print(f"digits: {len(X_train)} train / {len(X_test)} test images of 8x8 pixels\n")

    t0 = time.time()
    clf = DGCSPNClassifier(max_epochs=20, random_state=0).fit(X_train, y_train)
    print(f"DGCSPNClassifier ({time.time() - t0:.0f}s)")
    # Baseline: logistic regression on mean-imputed pixels (it cannot marginalise).
    baseline = make_pipeline(SimpleImputer(), StandardScaler(),
                             LogisticRegression(max_iter=5000)).fit(X_train, y_train)
    for fraction in (0.0, 0.25, 0.5):
        X_hidden = hide(X_test, fraction)
        acc, base = clf.score(X_hidden, y_test), baseline.score(X_hidden, y_test)
        print(f"  test accuracy with {fraction:4.0%} of pixels missing: {acc:.3f} "
              f"(mean imputation + LogisticRegression: {base:.3f})")

    t0 = time.time()
    density = DGCSPNDensityEstimator(depth=4, leaf_scale=0.5, max_epochs=10,
                                     random_state=0).fit(X_train)
    gmm = GaussianMixture(10, covariance_type="diag", reg_covar=0.1,
                          random_state=0).fit(X_train)
    print(f"\nDGCSPNDensityEstimator ({time.time() - t0:.0f}s)")
    print(f"  mean test log-likelihood: {density.score(X_test):.1f} "
          f"(GaussianMixture, 10 diagonal components, reg_covar=0.1: {gmm.score(X_test):.1f})")
    half = X_test.copy()
    half[:, 32:] = np.nan
    print(f"  ... of the top halves alone (bottom marginalised): {density.score(half):.1f}")

    t0 = time.time()
    # Pixels are 0..16: bound the completions to that range (observed pixels are kept).
    imputer = DGCSPNImputer(depth=4, leaf_scale=0.5, max_epochs=10, min_value=0,
                            max_value=16, random_state=0).fit(X_train)
    hidden = np.isnan(half)
    results = {"DGCSPNImputer": imputer.transform(half),
               "SimpleImputer(mean)": SimpleImputer().fit(X_train).transform(half),
               "KNNImputer(5)": KNNImputer().fit(X_train).transform(half)}
    print(f"\nDGCSPNImputer ({time.time() - t0:.0f}s), bottom half of each test digit hidden")
    for name, completed in results.items():
        mse = np.mean((completed[hidden] - X_test[hidden]) ** 2)
        print(f"  MSE on hidden pixels, {name:20s}: {mse:6.2f}")

    n = 12
    rows = [X_test[:n], half[:n], results["DGCSPNImputer"][:n]]
    mosaic = tile_images(np.concatenate(rows).reshape(-1, 8, 8) * (255 / 16), n_cols=n)
    os.makedirs(OUTPUT, exist_ok=True)
    path = os.path.join(OUTPUT, "digits_inpainting.png")
    write_png(path, np.kron(mosaic, np.ones((6, 6), np.uint8)))
    print(f"\nsaved originals / masked / inpainted digits to {path}")


if __name__ == "__main__":
    # No options; --help describes the demo, anything else is an error.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    main()
