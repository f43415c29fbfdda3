"""One worker of the multi-worker test (tests/test_distribute_multiworker.py).

Run with ``TF_CONFIG`` set. Under ``MultiWorkerMirroredStrategy``, on the same data as every
other worker, it fits a density estimator (hard EM with USI) with ``random_state=0`` and
with ``random_state=None`` and a classifier, then tries a fit on data that differ between
workers; it saves the fitted weights and the refusal's message to ``argv[1]`` (.npz).
"""

import sys

import numpy as np

import skspn.core  # noqa: F401  (quiet TensorFlow import)
import tensorflow as tf

# The strategy must exist before TensorFlow runs anything else.
strategy = tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING))

from sklearn.datasets import load_digits  # noqa: E402

from skspn import DGCSPNClassifier, DGCSPNDensityEstimator  # noqa: E402

X, y = load_digits(return_X_y=True)
X, y = X[:400], y[:400]
density_params = dict(max_epochs=2, batch_size=64, sum_channels=8, tol=None)
classifier_params = dict(max_epochs=1, batch_size=64, sum_channels=8, n_components=8)
worker = int(sys.argv[2])

with strategy.scope():
    density = DGCSPNDensityEstimator(random_state=0, **density_params).fit(X)
    unseeded = DGCSPNDensityEstimator(random_state=None, **density_params).fit(X)
    classifier = DGCSPNClassifier(random_state=0, **classifier_params).fit(X, y)
    try:  # each worker gets other rows: refused before any training step
        DGCSPNDensityEstimator(random_state=0, **density_params).fit(X[worker:])
        refusal = ""
    except ValueError as exc:
        refusal = str(exc)

arrays = {}
for name, est in [("density", density), ("unseeded", unseeded), ("classifier", classifier)]:
    arrays.update({f"{name}_{i}": w for i, w in enumerate(est.network_weights_)})
arrays["replicas"] = np.array([est._learner.parallel.n_replicas
                               for est in (density, unseeded, classifier)])
arrays["refusal"] = np.array(refusal)
np.savez(sys.argv[1], **arrays)
