"""The example and benchmark scripts refuse bad arguments before doing any work."""

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_demo_rejects_unknown_options():
    done = _run("examples/demo.py", "--bogus")
    assert done.returncode == 2 and "unrecognized arguments: --bogus" in done.stderr


# Each case names an output tag of its own: had the check regressed, the benchmark would
# run and must not overwrite the recorded results.
@pytest.mark.parametrize("args, message", [
    (["--quick", "--datasets", "mnist,bogus"], "unknown --datasets ['bogus']"),
    (["--ablation", "--ablation-datasets", "bogus"], "unknown --ablation-datasets"),
    # classification.py's name for Fashion-MNIST is accepted too: only 'bogus' is unknown.
    (["--quick", "--datasets", "fashion_mnist,bogus"], "unknown --datasets ['bogus']"),
    (["--quick", "--markdown-only"], "--markdown-only needs"),
])
def test_inpainting_benchmark_checks_arguments_first(args, message):
    done = _run("benchmarks/inpainting.py", *args, "--tag", "_no_such_run_of_test_scripts")
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--quick", "--accumulator-std", "foo"], "expected a float or 'none'"),
    # inpainting.py's name for Fashion-MNIST is accepted (argparse stops at the first error).
    (["--quick", "--datasets", "fashion", "--accumulator-std", "foo"],
     "expected a float or 'none'"),
    (["--quick", "--markdown-only"], "--markdown-only needs"),
])
def test_classification_benchmark_checks_arguments_first(args, message, tmp_path):
    done = _run("benchmarks/classification.py", *args, "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


def _inpainting_module():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import inpainting
    finally:
        sys.path.pop(0)
    return inpainting


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # tol=0: by design
def test_inpainting_iterative_baseline_runs_its_rounds():
    """Fitted on complete images, IterativeImputer's default stopping rule ends after one
    round (nothing changes), and transform then runs one round: the baseline labelled
    max_iter=3 must run three."""
    inpainting = _inpainting_module()
    rng = np.random.default_rng(0)
    X_train = rng.normal(size=(60, 16)) @ rng.normal(size=(16, 16))
    baselines = inpainting.make_baselines(iterative_max_iter=3, n_nearest=5)
    (name,) = [n for n in baselines if n.startswith("IterativeImputer")]
    assert "max_iter=3" in name
    model = baselines[name]().fit(X_train)
    assert model.n_iter_ == 3


def test_inpainting_ablation_resume_reuses_only_rows_fitted_on_the_same_images(monkeypatch):
    """``--resume`` reuses a stored row only if it saw the same training / test images (the
    same n_train, n_test and seed), not just the same label and parameters."""
    inpainting = _inpainting_module()
    fits = []

    class Fitted:
        history_ = [-1.0]

    def fake_fit(X_train, params, *args):
        fits.append(len(X_train))
        return Fitted(), 0.0

    scores = {"honest": {w: {"mse": 1.0} for w in inpainting.MASKS}}
    monkeypatch.setattr(inpainting, "load_dataset",
                        lambda name, n_train, n_test, seed: (np.zeros((n_train, 784)),
                                                             np.zeros((n_test, 784))))
    monkeypatch.setattr(inpainting, "fit_spn", fake_fit)
    monkeypatch.setattr(inpainting, "evaluate_spn", lambda *a, **k: (scores, None, None))
    monkeypatch.setattr(inpainting, "run_baselines", lambda *a, **k: {})

    def run(n_train, seed, previous=None):
        args = inpainting.parse_args(["--ablation", "--ablation-datasets", "mnist",
                                      "--n-train", str(n_train), "--n-test", "5",
                                      "--seed", str(seed), "--no-base"])
        return inpainting.run_ablation(args, only=["leaf_scale=0.5"], previous=previous)

    first = run(20, 0)
    assert fits == [20]
    run(20, 0, previous=first)  # same images: reused
    assert fits == [20]
    run(30, 0, previous=first)  # other training images: refitted
    assert fits == [20, 30]
    run(20, 1, previous=first)  # other seed: refitted
    assert fits == [20, 30, 20]
