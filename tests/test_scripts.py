"""The example and benchmark scripts refuse bad arguments before doing any work."""

import importlib
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


def _benchmark_module(name):
    """Import ``benchmarks/<name>.py`` (a script, not a package module)."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # tol=0: by design
def test_inpainting_iterative_baseline_runs_its_rounds():
    """Fitted on complete images, IterativeImputer's default stopping rule ends after one
    round (nothing changes), and transform then runs one round: the baseline labelled
    max_iter=3 must run three."""
    inpainting = _benchmark_module("inpainting")
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
    inpainting = _benchmark_module("inpainting")
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


def test_throughput_ratios_also_count_the_weight_normalisation(tmp_path):
    """skspn's forward / impute rows leave out the once-per-query weight normalisation that
    libspn-keras pays in every call: the table also gives the ratio with it added to every
    batch, and says which jit settings each side ran."""
    throughput = _benchmark_module("throughput")

    def record(library, op, jit, images_per_s, **extra):
        row = dict(batch=64, status="ok", images_per_s=images_per_s, compile_s=1.0,
                   peak_rss_mib=1.0, **extra)
        return dict(library=library, arch="mnist_inpainting", op=op, jit_compile=jit,
                    rows=[row], error=None)

    results = [record("skspn", "forward", False, 1600.0, normalise_weights_s=0.02),
               record("skspn", "forward", True, 800.0, normalise_weights_s=0.02),
               record("skspn", "hard_em", False, 600.0),
               record("libspn-keras", "forward", False, 400.0),
               record("libspn-keras", "hard_em", False, 200.0)]
    meta = dict(date="d", machine="m", cpus=2, devices=["CPU"], tf_version="t", mode="quick")
    path = tmp_path / "t.md"
    throughput.write_markdown(results, meta, path)
    text = path.read_text()
    assert "skspn jit off and jit on, libspn-keras jit off" in text
    # 64 images in 64 / 1600 + 0.02 s = 0.06 s: 1066.7 images/s, 2.67x against 400
    assert "| mnist_inpainting | forward | 64 | 1600.0 | 400.0 | 4.00x | 1066.7 | 2.67x |" in text
    assert "| mnist_inpainting | hard_em | 64 | 600.0 | 200.0 | 3.00x | - | - |" in text


def test_throughput_times_steps_after_the_same_warm_up_however_long_compiling_took(
        monkeypatch):
    """The first calls after compiling are slower. Every step is warmed up alike before
    it is timed: the loop used to warm up only steps whose first call took under a second,
    so skspn's (compiling for 1-4 s) were timed right after compiling and libspn-keras'
    (under a second) after a warm-up."""
    throughput = _benchmark_module("throughput")

    class Clock:  # each call of a step advances it by the step's duration
        now = 0.0

        @classmethod
        def perf_counter(cls):
            return cls.now

    monkeypatch.setattr(throughput, "time", Clock)
    for first_call_s in (0.2, 5.0):
        calls = []

        def make_step(batch, calls=calls, first_call_s=first_call_s):
            def step():
                calls.append(batch)
                Clock.now += first_call_s if len(calls) == 1 else (
                    0.030 if len(calls) <= 4 else 0.010)
            return step

        rows = throughput.time_batches(make_step, [64], repeats=2, emit=lambda line: None)
        (row,) = rows
        assert row["status"] == "ok"
        assert row["n_warmup"] >= throughput.WARMUP_CALLS and row["warmup_s"] >= 1.0
        assert row["median_s"] == pytest.approx(0.010)
        assert row["images_per_s"] == pytest.approx(6400.0)
        assert row["n_repeats"] >= 2


def test_throughput_quick_says_what_it_leaves_out(monkeypatch):
    """``--quick`` runs the Olivetti net at batch 64 / 128 only: asked for batch 512 it
    says so and starts no worker (it wrote empty tables without a word)."""
    import argparse

    throughput = _benchmark_module("throughput")
    workers, said = [], []
    monkeypatch.setattr(throughput, "run_subprocess",
                        lambda cmd, env=None: workers.append(cmd) or ([], None, None, None, 0.0))
    args = argparse.Namespace(quick=True, batches=[512], archs=["olivetti_inpainting"],
                              ops=["forward"], jit="off", peer=False, max_step_seconds=60.0)
    assert throughput.main_benchmark(args, said.append) == []
    assert workers == []
    assert any("--quick leaves out olivetti_inpainting at batch 512" in s for s in said)
    args.batches = [128, 512]
    throughput.main_benchmark(args, said.append)
    assert len(workers) == 1


def test_throughput_rounds_alternate_the_libraries_and_report_medians(monkeypatch, tmp_path):
    """``--rounds`` runs skspn and libspn-keras in turns (so the VM's drifts reach both
    sides of a ratio alike) and reports median images / second, the ratio of the medians
    and the range of the rounds' own ratios."""
    import argparse

    throughput = _benchmark_module("throughput")
    speeds = iter([1000.0, 200.0, 1500.0, 250.0, 900.0, 300.0])  # skspn, peer, skspn, ...
    workers = []

    def run(cmd, env=None):
        workers.append("peer" if "peer_libspn_keras.py" in " ".join(cmd) else "skspn")
        row = dict(batch=64, status="ok", images_per_s=next(speeds), compile_s=1.0,
                   peak_rss_mib=100.0 + len(workers))
        return [row], {}, None, None, 0.0

    monkeypatch.setattr(throughput, "run_subprocess", run)
    monkeypatch.setattr(throughput, "ensure_peer_venv", lambda log: "peer-python")
    args = argparse.Namespace(quick=True, batches=[64], archs=["mnist_inpainting"],
                              ops=["hard_em"], jit="off", peer=True, max_step_seconds=60.0,
                              rounds=3)
    results = throughput.main_benchmark(args, lambda message: None)
    assert workers == ["skspn", "peer"] * 3
    assert [r["round"] for r in results] == [0, 0, 1, 1, 2, 2]
    row = throughput.best_rows(results)[("skspn", "mnist_inpainting", "hard_em", 64)][False]
    assert row["images_per_s"] == 1000.0 and row["images_per_s_rounds"] == [1000.0, 1500.0, 900.0]
    assert row["peak_rss_mib"] == 105.0  # the largest
    meta = dict(date="d", machine="m", cpus=2, devices=["CPU"], tf_version="t", mode="quick")
    throughput.write_markdown(results, meta, tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "Each side ran 3 times" in text
    # medians 1000 / 250 = 4.00x; the rounds: 5.00x, 6.00x, 3.00x
    assert "| mnist_inpainting | hard_em | 64 | 1000.0 | 250.0 | 4.00x | - | - | 3.00-6.00x |" \
        in text
    with pytest.raises(SystemExit):
        throughput.main(["--rounds", "0"])


@pytest.mark.parametrize("peer_build, rebuilt", [("True", True), ("False", False)])
def test_throughput_peer_environment_runs_skspn_s_tensorflow_build(
        tmp_path, monkeypatch, peer_build, rebuilt):
    """A peer environment whose TensorFlow build (CUDA or CPU) differs from skspn's is
    recreated, with tf-keras installed without its dependencies (it requires the package
    `tensorflow`, which pip would put over tensorflow-cpu)."""
    throughput = _benchmark_module("throughput")
    venv = tmp_path / "peer"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    calls = []

    class Done:
        returncode = 0

        def __init__(self, stdout):
            self.stdout = stdout

    def run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[0] == sys.executable and cmd[1] == "-c":
            return Done("False\n")  # skspn's side: the CPU build
        if cmd[1] == "-c":
            return Done(peer_build + "\n")
        if cmd[1:3] == ["-m", "venv"]:
            (venv / "bin").mkdir(parents=True, exist_ok=True)
        return Done("")

    monkeypatch.setattr(throughput, "PEER_VENV", venv)
    monkeypatch.setattr(throughput.subprocess, "run", run)
    throughput.ensure_peer_venv(lambda message: None)
    installs = [c for c in calls if c[1:4] == ["-m", "pip", "install"]]
    assert bool(installs) == rebuilt
    if rebuilt:
        nodeps = [c for c in installs if "--no-deps" in c]
        assert len(nodeps) == 1 and "tf-keras==2.21.0" in nodeps[0]
        assert not any("tf-keras==2.21.0" in c for c in installs if "--no-deps" not in c)
