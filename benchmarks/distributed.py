"""Training throughput with 1 vs 2 (or all) replicas under ``tf.distribute.MirroredStrategy``.

Configurations, each in its own fresh subprocess:

``no strategy``   the learners as the estimators use them outside any strategy scope;
``1 replica``     ``MirroredStrategy`` over one device (the cost of the machinery alone);
``N replicas``    ``MirroredStrategy`` over N devices: the global batch is split, counts or
                  gradients are all-reduced.

Operations (same as ``throughput.py``): ``hard_em`` (one USI hard-EM step on count
accumulators) and ``adam`` (one Adam step: cross-entropy with dropout 0.2/0.2 on the
classifier, the generative NLL on the inpainting net), at global batch sizes 128 and 256.

Devices: where TensorFlow sees GPUs the replicas are the GPUs (1 and all of them). On a
CPU-only machine the CPU is split into 2 logical devices; they share the same cores, so
this measures the overhead of data parallelism rather than a speed-up (for that, run it
where there are several GPUs, or train across machines, see benchmarks/README.md).

Usage::

    python benchmarks/distributed.py            # writes results/distributed.{json,md}
    python benchmarks/distributed.py --quick    # MNIST inpainting net only, batch 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import throughput as tp  # noqa: E402  (architectures, synthetic batches, timing loop)

RESULTS = HERE / "results"
OPS = ("hard_em", "adam")


def _devices(tf):
    """Replica devices: the GPUs, else 2 logical CPU devices (set up before any op)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return [f"/gpu:{i}" for i in range(len(gpus))]
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    return ["/cpu:0", "/cpu:1"]


def run_worker(cfg):
    import numpy as np

    import skspn.core  # noqa: F401  (quiet TensorFlow import)
    import tensorflow as tf
    from skspn.core.learning import EMLearner, GradientLearner

    devices = _devices(tf)
    n = cfg["replicas"]
    strategy = None if n == 0 else tf.distribute.MirroredStrategy(devices[:n])
    arch = tp.ARCHS[cfg["arch"]]
    op = cfg["op"]
    scope = strategy.scope() if strategy is not None else _null()
    with scope:
        net = tp.build_skspn(arch, log_space=(op != "hard_em"))
    if op == "hard_em":
        learner = EMLearner(net, "hard_em_unweighted", strategy=strategy)
    else:
        objective = tp.adam_objective(arch)
        drop = 0.2 if objective == "ce" else 0.0
        learner = GradientLearner(net, objective, 1e-3, drop, drop, strategy=strategy)
    print(json.dumps(dict(info=dict(devices=devices[:max(n, 1)],
                                    device_types=sorted({d.device_type for d in
                                                         tf.config.list_logical_devices()}),
                                    tf_version=tf.__version__))))

    def make_step(batch):
        x, y = tp.make_batch(arch, batch, op)
        weight = np.ones(batch, np.float32)
        seed = np.array([1, 2], np.int64)
        if op == "hard_em":
            return lambda: learner.step(x, weight, seed)
        return lambda: learner.step(x, weight, seed, y)

    tp.time_batches(make_step, cfg["batches"], cfg["repeats"])


def _null():
    import contextlib

    return contextlib.nullcontext()


def measure(cfg):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    rows, info, _, error, _ = tp.run_subprocess(cmd)
    return rows, info, error


def n_replica_options():
    """Replica counts to compare: 1 and all GPUs, or 1 and 2 logical CPUs."""
    probe = subprocess.run(
        [sys.executable, "-c", "import skspn.core, tensorflow as tf; "
         "print(len(tf.config.list_physical_devices('GPU')))"],
        capture_output=True, text=True, cwd=str(tp.ROOT))
    try:
        n_gpus = int(probe.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        n_gpus = 0
    return ("GPU", sorted({1, n_gpus})) if n_gpus else ("CPU (2 logical devices)", [1, 2])


def to_markdown(report):
    lines = ["# Data-parallel training throughput (images / second)", "",
             f"Measured {report['date']} on {report['machine']}, TensorFlow "
             f"{report['tf_version']}; replica devices: {report['device_kind']}. Median of "
             f"repeated steps after tracing; global batch = the batch size below, split "
             f"evenly over the replicas. 1-min load average during the run: "
             f"{report['load_min']:.1f}-{report['load_max']:.1f}.", ""]
    if report["device_kind"].startswith("CPU"):
        lines += ["On this CPU-only machine both replicas are logical devices on the same 2 "
                  "cores, so the 2-replica column measures the cost of splitting the batch "
                  "and all-reducing (no extra compute is available); on several GPUs or "
                  "machines the replicas add compute.", ""]
    labels = [c["label"] for c in report["configs"]]
    lines.append("| arch | op | global batch | " + " | ".join(labels) + " | "
                 + f"{labels[-1]} / {labels[0]} |")
    lines.append("|---" * (4 + len(labels)) + "|")
    for key, per_config in report["table"].items():
        arch, op, batch = key.split("|")
        vals = [per_config.get(lbl) for lbl in labels]
        cells = [f"{v:.1f}" if v else "-" for v in vals]
        ratio = f"{vals[-1] / vals[0]:.2f}x" if vals[-1] and vals[0] else "-"
        lines.append(f"| {arch} | {op} | {batch} | " + " | ".join(cells) + f" | {ratio} |")
    if report["errors"]:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in report["errors"]]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MNIST inpainting net, batch 128")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_worker(json.loads(args.worker))
        return

    archs = ["mnist_inpainting"] if args.quick else ["mnist_inpainting", "mnist_classifier"]
    batches = [128] if args.quick else [128, 256]
    kind, replica_counts = n_replica_options()
    configs = [dict(label="no strategy", replicas=0)] + [
        dict(label=f"{n} replica{'s' if n > 1 else ''}", replicas=n) for n in replica_counts]
    table, errors, loads, tf_version = {}, [], [], "?"
    t_start = time.time()
    for arch in archs:
        for op in OPS:
            for config in configs:
                cfg = dict(arch=arch, op=op, replicas=config["replicas"], batches=batches,
                           repeats=args.repeats)
                rows, info, error = measure(cfg)
                if info:
                    tf_version = info.get("tf_version", tf_version)
                if error:
                    errors.append(f"{arch} {op} {config['label']}: {error[:300]}")
                for row in rows:
                    key = f"{arch}|{op}|{row['batch']}"
                    if row.get("status") == "ok":
                        table.setdefault(key, {})[config["label"]] = row["images_per_s"]
                        loads.append(row["loadavg_1min"])
                    else:
                        errors.append(f"{key} {config['label']}: {row.get('error') or row}")
                print(f"[{time.time() - t_start:7.1f} s] {arch:17s} {op:8s} "
                      f"{config['label']:12s} " + ", ".join(
                          f"b{r['batch']}: {r.get('images_per_s', float('nan')):.0f} img/s"
                          for r in rows), flush=True)
    report = dict(date=time.strftime("%Y-%m-%d %H:%M"),
                  machine=f"{platform.machine()} ({os.cpu_count()} CPUs)",
                  tf_version=tf_version, device_kind=kind, configs=configs, table=table,
                  errors=errors, load_min=min(loads, default=0.0),
                  load_max=max(loads, default=0.0), quick=args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / ("distributed_quick" if args.quick else "distributed")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
