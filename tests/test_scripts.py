"""The example and benchmark scripts refuse bad arguments before doing any work."""

import os
import subprocess
import sys

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
