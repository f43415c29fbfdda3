"""Two worker processes on 127.0.0.1 train one model under MultiWorkerMirroredStrategy."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skspn import DGCSPNDensityEstimator

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_multiworker_worker.py")
TIMEOUT_S = 300


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_workers(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs, outputs = [], []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}))
            env.pop("CUDA_VISIBLE_DEVICES", None)
            out = tmp_path / f"worker{index}.npz"
            log = open(tmp_path / f"worker{index}.log", "w")
            procs.append(subprocess.Popen([sys.executable, WORKER, str(out), str(index)],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
            outputs.append(out)
        deadline = time.time() + TIMEOUT_S
        for proc in procs:
            proc.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"multi-worker training did not finish within {TIMEOUT_S} s")
    finally:
        for proc in procs:  # never leave a worker behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for index, proc in enumerate(procs):
        if proc.returncode != 0:
            log = (tmp_path / f"worker{index}.log").read_text()[-3000:]
            pytest.fail(f"worker {index} exited with {proc.returncode}:\n{log}")
    return [dict(np.load(out)) for out in outputs]


def test_two_workers_train_one_model(tmp_path):
    """Under a minute on a 2-core CPU: two TensorFlow start-ups, three small fits, a refusal."""
    first, second = _run_workers(tmp_path)
    np.testing.assert_array_equal(first["replicas"], [2, 2, 2])
    assert first.keys() == second.keys()
    weights = [key for key in first if key not in ("replicas", "refusal")]
    for key in weights:  # both workers hold the same models (random_state=None too)
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    # ... and it is the model one device trains on the same global batches (the counts
    # of hard EM with USI are exact).
    X = load_digits().data[:400]
    single = DGCSPNDensityEstimator(max_epochs=2, batch_size=64, sum_channels=8, tol=None,
                                    random_state=0).fit(X)
    for i, w in enumerate(single.network_weights_):
        np.testing.assert_array_equal(first[f"density_{i}"], w)
    # Different data on the workers is refused with a message that says so.
    for result in (first, second):
        assert "needs the same X on every worker" in str(result["refusal"])
