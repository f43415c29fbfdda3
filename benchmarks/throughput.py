"""Throughput of the skspn core (images / second), optionally side by side with libspn-keras.

Operations, each timed on three architectures (the paper's MNIST classifier, the MNIST
inpainting net, the Olivetti 64x64 inpainting net) at several batch sizes, with
``jit_compile`` off and on:

``forward``  ``CompiledOps(net).log_likelihood(x, weights)``, with ``weights =
             ops.normalised_weights()`` formed once before the timed steps, as a query over
             many batches does (the estimators' ``score_samples``, ``predict``, ``transform``);
             the median time of forming them is recorded as ``normalise_weights_s``
``hard_em``  ``EMLearner(net, 'hard_em_unweighted').step(x, weight, seed)`` (count accumulators)
``adam``     ``GradientLearner(net, 'ce', 1e-3, 0.2, 0.2).step(x, weight, seed, y)`` on the
             classifier; on the two inpainting nets (no classes) the generative gradient
             ``GradientLearner(net, 'nll', 1e-3)``
``impute``   ``CompiledOps(net).complete(x, 'marginal', weights=weights)`` with the bottom
             half of every image missing (``weights`` as for ``forward``)

Every (library, architecture, operation, jit) runs in its own fresh subprocess; inside it the
batch sizes run in ascending order, and ``ru_maxrss`` read after each batch size is the peak
resident memory of the process up to then (TensorFlow runtime included). The first call of
each batch size (tracing / XLA compilation plus one run) is reported as ``first_call_s``;
``compile_s`` = first call - median step. Throughput = batch / median step time.

Usage::

    python benchmarks/throughput.py              # full: batches 64/128/512, 5 repeats
    python benchmarks/throughput.py --quick      # ~10 min: batches 64/128, no Olivetti 512
    python benchmarks/throughput.py --peer       # also libspn-keras 0.6.0 in benchmarks/.peer-venv
    python benchmarks/throughput.py --peer --rounds 3   # both 3 times, alternating: medians
    python benchmarks/throughput.py --scaling    # image size / depth scaling + plot only
    python benchmarks/throughput.py --quick --peer --scaling

Nothing is placed on a device by hand: on a machine where TensorFlow sees a GPU the same
commands measure the GPU (the JSON records the visible devices).

This module imports only the standard library and numpy at top level, so that
``peer_libspn_keras.py`` (running in the libspn-keras venv, without skspn) can reuse the
architecture table and the timing loop.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _provenance import cpu_model, git_state

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PEER_VENV = HERE / ".peer-venv"
PEER_PACKAGES = ["tensorflow-cpu==2.21.0", "tensorflow-probability==0.25.0", "plotly",
                 "colorlover"]
# libspn-keras's pins (tensorflow<2.?) would drag in an old TensorFlow; tf-keras requires
# the package `tensorflow` (its only dependency), which pip would install over
# tensorflow-cpu: the peer then ran TensorFlow's CUDA build, skspn the CPU build.
PEER_NODEPS = ["tf-keras==2.21.0", "libspn-keras==0.6.0"]
_TF_BUILD = ("import tensorflow as tf; "
             "print(bool(tf.sysconfig.get_build_info().get('is_cuda_build')))")

# ----------------------------------------------------------------------------- architectures
# Plain data: both the skspn worker and the libspn-keras worker build from this table.
ARCHS = {
    "mnist_classifier": dict(
        shape=(28, 28), components=32, leaf_trainable=True, depth=6, n_nonoverlapping=2,
        first_product="depthwise", sums=[64, 64, 64, 128, 128], n_classes=10),
    "mnist_inpainting": dict(
        shape=(28, 28), components=4, leaf_trainable=False, depth=6, n_nonoverlapping=0,
        first_product="one_hot", sums=[16] * 5, n_classes=None),
    "olivetti_inpainting": dict(
        shape=(64, 64), components=4, leaf_trainable=False, depth=7, n_nonoverlapping=0,
        first_product="one_hot", sums=[16] * 6, n_classes=None),
}
OPS = ("forward", "hard_em", "adam", "impute")
MAX_STEP_SECONDS = 60.0
# Untimed calls after the first (compiling) one: at least this many, and on until this
# many seconds (see time_batches).
WARMUP_CALLS = 3
WARMUP_S = 1.0


def scaling_arch(size, depth="auto"):
    """Inpainting-style net for the scaling study: 4 components, 16 sums per layer."""
    return dict(shape=(size, size), components=4, leaf_trainable=False, depth=depth,
                n_nonoverlapping=0, first_product="one_hot", sums=16, n_classes=None)


def adam_objective(arch):
    return "ce" if arch["n_classes"] else "nll"


# ----------------------------------------------------------------------------- data
def make_batch(arch, batch, op, seed=0):
    """Standardised-looking random images ``[B, H, W, 1]``; bottom half NaN for ``impute``."""
    rng = np.random.default_rng(seed)
    h, w = arch["shape"]
    x = rng.standard_normal((batch, h, w, 1)).astype(np.float32)
    if op == "impute":
        x[:, h // 2:] = np.nan
    y = rng.integers(0, arch["n_classes"] or 1, size=batch).astype(np.int32)
    return x, y


# ----------------------------------------------------------------------------- timing loop
def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def available_mib():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("inf")


def time_batches(make_step, batches, repeats, max_step_s=MAX_STEP_SECONDS, emit=print,
                 warmup_calls=WARMUP_CALLS, warmup_s=WARMUP_S):
    """Time ``make_step(batch)() `` for each batch size (ascending); one JSON line per size.

    ``make_step(batch)`` returns a zero-argument callable running one synchronous step.
    After the first call (tracing, compilation) the step runs ``warmup_calls`` times, and
    on until the warm-up took ``warmup_s``, untimed; then at least ``repeats`` timed calls
    (more for fast steps, up to about a second of them, at most 25), of which the median
    is reported. The warm-up is the same for every step, however long its first call took:
    the calls right after compiling are slower (the MNIST inpainting net's forward pass at
    batch 64: 25, 26, 24 ms, then 18-21 ms). Batch sizes whose predicted step time exceeds
    ``max_step_s`` or whose predicted memory exceeds what is available are skipped with
    the reason recorded.
    """
    base_rss = peak_rss_mib()
    prev = None  # (batch, median, rss)
    rows = []
    for batch in sorted(batches):
        row = dict(batch=batch)
        if prev is not None:
            pb, pmed, prss = prev
            est_t = pmed * batch / pb
            est_mem = base_rss + (prss - base_rss) * batch / pb
            if est_t > max_step_s:
                row.update(status="skipped", reason=f"estimated {est_t:.0f} s per step "
                           f"(> {max_step_s:.0f} s) from batch {pb}")
            elif est_mem > 0.85 * (available_mib() + prss):
                row.update(status="skipped", reason=f"estimated peak memory {est_mem:.0f} MiB "
                           f"exceeds available memory")
        if "status" not in row:
            try:
                step = make_step(batch)
                row.update(getattr(step, "extra", {}))
                t0 = time.perf_counter()
                step()
                first = time.perf_counter() - t0
                warmup, n_warmup, est = 0.0, 0, first
                while (n_warmup < warmup_calls or warmup < warmup_s) and est <= max_step_s:
                    t0 = time.perf_counter()
                    step()
                    est = time.perf_counter() - t0
                    warmup += est
                    n_warmup += 1
                n_rep = max(repeats, min(25, int(math.ceil(1.0 / max(est, 1e-3)))))
                times = []
                for _ in range(n_rep):
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
                    if times[-1] > max_step_s:
                        break
                med = statistics.median(times)
                rss = peak_rss_mib()
                row.update(status="ok", median_s=med, min_s=min(times), max_s=max(times),
                           n_repeats=len(times), n_warmup=n_warmup, warmup_s=warmup,
                           images_per_s=batch / med, first_call_s=first,
                           compile_s=max(first - med, 0.0), peak_rss_mib=rss,
                           base_rss_mib=base_rss, loadavg_1min=os.getloadavg()[0])
                prev = (batch, med, rss)
            except Exception as exc:  # noqa: BLE001 - record and go on
                msg = f"{type(exc).__name__}: {exc}"
                row.update(status="error", error=msg[:2000])
        rows.append(row)
        emit(json.dumps(row))
        sys.stdout.flush()
    return rows


# ----------------------------------------------------------------------------- skspn worker
def build_skspn(arch, log_space, seed=0):
    from skspn.core import DGCSPN, NormalLeaf, plan_products
    from skspn.core.leaves import equidistant_means

    products = plan_products(arch["shape"], depth=arch["depth"], kernel_size=2,
                             n_nonoverlapping=arch["n_nonoverlapping"],
                             first_product=arch["first_product"])
    sums = arch["sums"]
    if isinstance(sums, int):
        sums = [sums] * (len(products) - 1)
    leaf = NormalLeaf(equidistant_means(arch["shape"], 1, arch["components"], -1.5, 1.5),
                      trainable=arch["leaf_trainable"])
    return DGCSPN(arch["shape"], leaf, products, sums, n_classes=arch["n_classes"],
                  log_space=log_space, seed=seed)


def skspn_step_factory(arch, op, jit):
    import tensorflow as tf
    from skspn.core.learning import CompiledOps, EMLearner, GradientLearner

    net = build_skspn(arch, log_space=(op != "hard_em"))
    if op in ("forward", "impute"):
        ops = CompiledOps(net, jit_compile=jit)
    elif op == "hard_em":
        learner = EMLearner(net, "hard_em_unweighted", jit_compile=jit)
    elif op == "adam":
        obj = adam_objective(arch)
        drop = 0.2 if obj == "ce" else 0.0
        learner = GradientLearner(net, obj, 1e-3, drop, drop, jit_compile=jit)
    else:
        raise ValueError(op)

    def make_step(batch):
        x, y = make_batch(arch, batch, op)
        x = tf.constant(x)
        weight = np.ones(batch, np.float32)
        seed = np.array([1, 2], np.int64)
        if op in ("forward", "impute"):
            # once per query, not per batch; what that costs is recorded beside the step
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                weights = ops.normalised_weights()
                [w.numpy() for w in weights.linear]
                times.append(time.perf_counter() - t0)
            if op == "forward":
                def step():
                    return ops.log_likelihood(x, weights).numpy()
            else:
                def step():
                    return ops.complete(x, "marginal", weights=weights).numpy()
            step.extra = dict(normalise_weights_s=statistics.median(times[2:]))
            return step
        if op == "hard_em":
            return lambda: learner.step(x, weight, seed)
        return lambda: learner.step(x, weight, seed, y)

    return make_step, net


def run_worker(args):
    """Entry of the per-configuration subprocess (skspn side)."""
    import tensorflow as tf

    cfg = json.loads(args.worker)
    arch = cfg["arch_spec"]
    info = dict(devices=[d.device_type for d in tf.config.list_logical_devices()],
                tf_version=tf.__version__)
    print(json.dumps(dict(info=info)))
    make_step, net = skspn_step_factory(arch, cfg["op"], cfg["jit"])
    print(json.dumps(dict(describe=net.describe())))
    time_batches(make_step, cfg["batches"], cfg["repeats"], cfg.get("max_step_s", MAX_STEP_SECONDS))


# ----------------------------------------------------------------------------- orchestration
def run_subprocess(cmd, env=None, timeout=1800):
    """Run a worker; return (rows, info, describe, error)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=str(ROOT))
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err, rc = f"timeout after {timeout} s", "timeout"
    rows, info, describe = [], None, None
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "info" in obj:
            info = obj["info"]
        elif "describe" in obj:
            describe = obj["describe"]
        elif "batch" in obj:
            rows.append(obj)
    error = None
    if rc != 0:
        tail = "\n".join(line for line in (err or "").splitlines()
                         if not line.startswith(("I0000", "W0000", "WARNING: All log")))[-1500:]
        error = f"exit {rc}" + (" (killed: out of memory?)" if rc == -9 else "") + ": " + tail
    return rows, info, describe, error, time.perf_counter() - t0


def ensure_peer_venv(log):
    """Create benchmarks/.peer-venv with libspn-keras 0.6.0 (never a dependency of skspn)."""
    py = PEER_VENV / "bin" / "python"
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if py.exists():
        check = subprocess.run([str(py), "-c",
                                "import libspn_keras, tf_keras, tensorflow_probability; "
                                + _TF_BUILD], capture_output=True, text=True, env=env)
        if check.returncode == 0:  # both sides must run the same kind of TensorFlow build
            ours = subprocess.run([sys.executable, "-c", _TF_BUILD], capture_output=True,
                                  text=True, env=env)
            if check.stdout.split()[-1:] == ours.stdout.split()[-1:]:
                return py
            log(f"{PEER_VENV} runs another TensorFlow build (CUDA build: "
                f"{check.stdout.split()[-1]}) than skspn's; recreating it")
            shutil.rmtree(PEER_VENV)
    log(f"creating {PEER_VENV} (python -m venv; "
        f"pip install {' '.join(PEER_PACKAGES + PEER_NODEPS)})")
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    # a venv is self-ignoring only on Python >= 3.13; make sure git never sees it
    (PEER_VENV / ".gitignore").write_text("*\n")
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + PEER_PACKAGES, check=True)
    subprocess.run(pip + ["--no-deps"] + PEER_NODEPS, check=True)
    return py


def peer_env():
    env = dict(os.environ)
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(HERE))
    return env


def main_benchmark(args, log, save=None):
    batches = args.batches or ([64, 128] if args.quick else [64, 128, 512])
    repeats = 2 if args.quick else 5
    archs = args.archs or list(ARCHS)
    ops = args.ops or list(OPS)
    jits = [False, True] if args.jit == "both" else [args.jit == "on"]
    peer_py = ensure_peer_venv(log) if args.peer else None
    rounds = getattr(args, "rounds", 1)
    results = []
    for arch_name in archs:
        arch = ARCHS[arch_name]
        arch_batches = [b for b in batches
                        if not (args.quick and arch_name.startswith("olivetti") and b > 128)]
        if len(arch_batches) < len(batches):  # said, or a table of only those comes out empty
            log(f"--quick leaves out {arch_name} at batch "
                f"{', '.join(str(b) for b in batches if b not in arch_batches)} "
                f"(run without --quick for it)")
        if not arch_batches:
            continue
        for op in ops:
            for jit in jits:
                libs = ["skspn"] + (["libspn-keras"] if peer_py else [])
                # Rounds alternate the libraries, so that the VM's drifts (15-40 % between
                # minutes here) reach both sides of a ratio alike (best_rows: medians).
                for round_index, lib in itertools.product(range(rounds), libs):
                    cfg = dict(arch=arch_name, arch_spec=arch, op=op, jit=jit, batches=arch_batches,
                               repeats=repeats, max_step_s=args.max_step_seconds)
                    if lib == "skspn":
                        cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
                        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
                    else:
                        cmd = [str(peer_py), str(HERE / "peer_libspn_keras.py"), json.dumps(cfg)]
                        env = peer_env()
                    rows, info, describe, error, wall = run_subprocess(cmd, env=env)
                    rec = dict(library=lib, arch=arch_name, op=op, jit_compile=jit, rows=rows,
                               devices=(info or {}).get("devices"), error=error,
                               wall_s=round(wall, 1), round=round_index)
                    if lib == "skspn" and describe:
                        rec["describe"] = describe
                    if lib != "skspn" and info:
                        rec["peer_info"] = info
                    results.append(rec)
                    summary = ", ".join(
                        f"b{r['batch']}: {r['images_per_s']:.0f} img/s" if r["status"] == "ok"
                        else f"b{r['batch']}: {r['status']}" for r in rows)
                    log(f"{lib:12s} {arch_name:20s} {op:8s} jit={int(jit)}  {summary}"
                        + (f"  [{error[:200]}]" if error else "") + f"  ({wall:.0f} s)")
                    if save is not None:
                        save(results)  # partial results survive an interrupted run
    return results


def best_rows(results):
    """{(lib, arch, op, batch): {jit: row}}; rows of several rounds (``--rounds``) merged
    by ``median_row``."""
    runs = {}
    for rec in results:
        for row in rec["rows"]:
            key = (rec["library"], rec["arch"], rec["op"], row["batch"])
            runs.setdefault(key, {}).setdefault(rec["jit_compile"], []).append(row)
    return {key: {jit: median_row(rows) for jit, rows in by_jit.items()}
            for key, by_jit in runs.items()}


def median_row(rows):
    """One row for the runs ``rows`` of a (library, net, op, batch, jit), in round order:
    the median images / second, compile time and normalisation time of the successful
    ones, their largest peak memory, and every round's images / second
    (``images_per_s_rounds``, when there are several)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if len(ok) < 2:
        return ok[0] if ok else rows[0]
    merged = dict(ok[0])
    for field in ("images_per_s", "compile_s", "normalise_weights_s"):
        if field in merged:
            merged[field] = statistics.median(r[field] for r in ok)
    merged["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
    merged["images_per_s_rounds"] = [r["images_per_s"] for r in ok]
    return merged


def fastest_row(by_jit):
    """The successful row of ``{jit: row}`` with the most images per second, or None."""
    return max((r for r in by_jit.values() if r.get("status") == "ok"),
               key=lambda r: r["images_per_s"], default=None)


def write_markdown(results, meta, path):
    table = best_rows(results)
    lines = ["# Throughput (images / second)", ""]
    lines.append(f"Measured {meta['date']} on {meta['machine']} {meta.get('cpu', '')} "
                 f"({meta['cpus']} CPUs, devices "
                 f"{meta['devices']}), TensorFlow {meta['tf_version']}; mode: {meta['mode']}; "
                 f"commit {(meta.get('git_commit') or '?')[:7]}"
                 f"{' with uncommitted changes in skspn/' if meta.get('git_dirty_skspn') else ''}. "
                 "Median of repeated steps after compilation; peak memory is the process's "
                 "max RSS (TensorFlow runtime included). 1-min load average during the run: "
                 f"{meta.get('loadavg_range', '?')} (the run's own processes included).")
    lines.append("")
    lines.append("`adam` is the discriminative step (CE, dropout 0.2/0.2) on the classifier "
                 "and the generative gradient step (NLL, no dropout) on the inpainting nets. "
                 "`hard_em` uses count accumulators (log_space=False).")
    lines.append("")
    libs = sorted({r["library"] for r in results}, key=lambda s: s != "skspn")
    for lib in libs:
        lines.append(f"## {lib}")
        lines.append("")
        lines.append("| arch | op | batch | jit off img/s | jit on img/s | faster | "
                     "compile s (off / on) | peak RSS MiB (off / on) |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for (l, arch, op, batch), by_jit in sorted(table.items(), key=lambda kv: (
                list(ARCHS).index(kv[0][1]) if kv[0][1] in ARCHS else 99, OPS.index(kv[0][2]),
                kv[0][3])):
            if l != lib:
                continue
            cells = []
            for jit in (False, True):
                row = by_jit.get(jit)
                if row is None:
                    cells.append(("-", "-", "-"))
                elif row["status"] == "ok":
                    cells.append((f"{row['images_per_s']:.1f}", f"{row['compile_s']:.1f}",
                                  f"{row['peak_rss_mib']:.0f}"))
                elif row["status"] == "skipped":
                    cells.append(("skipped", "-", "-"))
                else:
                    cells.append(("error", "-", "-"))
            ok = {j: r["images_per_s"] for j, r in by_jit.items() if r.get("status") == "ok"}
            faster = ("on" if ok[True] > ok[False] else "off") if len(ok) == 2 else \
                (("on" if True in ok else "off") if ok else "-")
            lines.append(f"| {arch} | {op} | {batch} | {cells[0][0]} | {cells[1][0]} | {faster} | "
                         f"{cells[0][1]} / {cells[1][1]} | {cells[0][2]} / {cells[1][2]} |")
        lines.append("")
    if "libspn-keras" in libs:
        ran = {lib: " and ".join(f"jit {'on' if jit else 'off'}" for jit in (False, True)
                                 if any(r["library"] == lib and r["jit_compile"] == jit
                                        for r in results)) for lib in libs}
        lines.append("## skspn / libspn-keras (best jit setting each side ran: skspn "
                     f"{ran['skspn']}, libspn-keras {ran['libspn-keras']})")
        lines.append("")
        lines.append(
            "skspn normalises the sum weights once per query (`forward`, `impute`), "
            "libspn-keras in every call: the skspn column leaves that out, as for a query "
            "of many batches; the last two columns add one normalisation to every skspn "
            "batch, as for a query of one batch (`normalise_weights_s`, measured with the "
            "copy to numpy, so slightly high).")
        lines.append("")
        rounds = max((len(row.get("images_per_s_rounds", [])) for by_jit in table.values()
                      for row in by_jit.values()), default=0)
        if rounds:
            lines.append(
                f"Each side ran {rounds} times, alternating: medians, and the range of the "
                "ratios of the rounds (each round's skspn against the libspn-keras run "
                "right after it, best jit setting of the medians).")
            lines.append("")
        lines.append("| arch | op | batch | skspn img/s | libspn-keras img/s | ratio | "
                     "skspn img/s, normalised per batch | ratio so |"
                     + (" ratios of the rounds |" if rounds else ""))
        lines.append("|---|---|---|---|---|---|---|---|" + ("---|" if rounds else ""))
        for (lib, arch, op, batch), by_jit in sorted(table.items(), key=lambda kv: (
                list(ARCHS).index(kv[0][1]) if kv[0][1] in ARCHS else 99, OPS.index(kv[0][2]),
                kv[0][3])):
            if lib != "skspn":
                continue
            peer = table.get(("libspn-keras", arch, op, batch), {})
            best, peer_best = fastest_row(by_jit), fastest_row(peer)
            s = best and best["images_per_s"]
            p = peer_best and peer_best["images_per_s"]
            ratio = f"{s / p:.2f}x" if s and p else "-"
            per_batch, ratio_per_batch = "-", "-"
            if best and "normalise_weights_s" in best:
                with_norm = batch / (batch / s + best["normalise_weights_s"])
                per_batch = f"{with_norm:.1f}"
                ratio_per_batch = f"{with_norm / p:.2f}x" if p else "-"
            by_round = "-"
            if rounds and best and peer_best:
                pairs = list(zip(best.get("images_per_s_rounds", []),
                                 peer_best.get("images_per_s_rounds", [])))
                if pairs:
                    each = [a / b for a, b in pairs]
                    by_round = f"{min(each):.2f}-{max(each):.2f}x"
            lines.append(f"| {arch} | {op} | {batch} | {s and f'{s:.1f}'} | "
                         f"{p and f'{p:.1f}'} | {ratio} | {per_batch} | {ratio_per_batch} |"
                         + (f" {by_round} |" if rounds else ""))
        lines.append("")
    errors = [(r["library"], r["arch"], r["op"], r["jit_compile"],
               row.get("error") or row.get("reason"))
              for r in results for row in r["rows"] if row["status"] != "ok"]
    errors += [(r["library"], r["arch"], r["op"], r["jit_compile"], r["error"])
               for r in results if r["error"]]
    if errors:
        lines.append("## Skipped / failed")
        lines.append("")
        seen = set()
        for lib, arch, op, jit, msg in errors:
            msg = (msg or "").replace("\n", " ")
            short = msg[:300]
            key = (lib, arch, op, jit, short)
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- {lib} {arch} {op} jit={'on' if jit else 'off'}: {short}")
        lines.append("")
    path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------- scaling
def scaling_benchmark(args, log):
    sizes = [16, 32, 64, 96, 128]
    batch = 32
    repeats = 2 if args.quick else 3
    jit = args.jit == "on"
    out = []
    configs = [("size", s, "auto") for s in sizes]
    sys.path.insert(0, str(ROOT))
    from skspn.core.scopes import min_depth  # pure numpy; no TensorFlow

    lo = min_depth((32, 32))
    configs += [("depth", 32, d) for d in (lo, lo + 1, lo + 2)]
    for kind, size, depth in configs:
        arch = scaling_arch(size, depth)
        for op in ("forward", "hard_em"):
            cfg = dict(arch=f"scaling_{size}_{depth}", arch_spec=arch, op=op, jit=jit,
                       batches=[batch], repeats=repeats, max_step_s=args.max_step_seconds)
            cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
            rows, info, describe, error, wall = run_subprocess(
                cmd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
            row = rows[0] if rows else dict(status="error")
            d = depth if depth != "auto" else min_depth((size, size))
            rec = dict(kind=kind, size=size, depth=d, depth_arg=depth, op=op, batch=batch,
                       jit_compile=jit, describe=describe, error=error)
            rec.update({k: v for k, v in row.items() if k != "batch"})
            out.append(rec)
            log(f"scaling {kind:5s} {size:4d}px depth {d} {op:8s} "
                + (f"{row['images_per_s']:.1f} img/s, {row['peak_rss_mib']:.0f} MiB"
                   if row.get("status") == "ok"
                   else str(row.get("error") or row.get("reason") or error)))
    return out


def cells_per_image(describe):
    """Sum over layers of output cells x channels (a proxy for the work per image)."""
    import re

    total = 0
    for m in re.finditer(r"-> \((\d+), (\d+)\) x (\d+)", describe or ""):
        h, w, c = map(int, m.groups())
        total += h * w * c
    return total


def plot_scaling(rows, path, log):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: pip install matplotlib (the 'benchmarks' extra); no plot")
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for op, marker in (("forward", "o"), ("hard_em", "s")):
        rs = [r for r in rows if r["kind"] == "size" and r["op"] == op and r.get("status") == "ok"]
        px = [r["size"] ** 2 for r in rs]
        axes[0].loglog(px, [r["median_s"] / r["batch"] * 1e3 for r in rs], marker=marker, label=op)
        axes[2].plot([r["size"] for r in rs], [r["peak_rss_mib"] for r in rs], marker=marker,
                     label=f"{op} (size)")
        rd = [r for r in rows
              if r["kind"] == "depth" and r["op"] == op and r.get("status") == "ok"]
        axes[1].plot([r["depth"] for r in rd], [r["images_per_s"] for r in rd], marker=marker,
                     label=op)
        ax2 = axes[1]
        for r in rd:
            ax2.annotate(f"{r['peak_rss_mib']:.0f} MiB", (r["depth"], r["images_per_s"]),
                         fontsize=7, textcoords="offset points", xytext=(3, 3))
    rs = [r for r in rows
          if r["kind"] == "size" and r["op"] == "forward" and r.get("status") == "ok"]
    if rs:
        px = np.array([r["size"] ** 2 for r in rs], float)
        t0 = rs[0]["median_s"] / rs[0]["batch"] * 1e3
        axes[0].loglog(px, t0 * px / px[0], "k--", lw=0.8, label="linear in pixels")
    axes[0].set_xlabel("pixels per image")
    axes[0].set_ylabel("ms per image (batch 32)")
    axes[0].set_title("cost vs image size (depth auto)")
    axes[0].legend()
    axes[1].set_xlabel("depth (product layers), 32x32")
    axes[1].set_ylabel("images / s (batch 32)")
    axes[1].set_title("throughput vs depth (peak RSS annotated)")
    axes[1].legend()
    axes[2].set_xlabel("image side (pixels)")
    axes[2].set_ylabel("peak RSS MiB (process)")
    axes[2].set_title("peak memory vs image size")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"wrote {path}")


def scaling_markdown(rows):
    lines = ["## Scaling (inpainting-style net: 4 components, 16 sums, batch 32, "
             f"jit {'on' if rows and rows[0]['jit_compile'] else 'off'})", "",
             "| study | side | depth | op | img/s | ms / image | us / pixel | "
             "work (cells x ch per image) | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['kind']} | {r['size']} | {r['depth']} | {r['op']} | "
                         f"{r.get('status')} | | | | |")
            continue
        ms = r["median_s"] / r["batch"] * 1e3
        lines.append(f"| {r['kind']} | {r['size']} | {r['depth']} | {r['op']} | "
                     f"{r['images_per_s']:.1f} | "
                     f"{ms:.2f} | {ms * 1e3 / r['size'] ** 2:.2f} | "
                     f"{cells_per_image(r['describe'])} | "
                     f"{r['peak_rss_mib']:.0f} |")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="batches 64/128, 2 repeats, no Olivetti 512")
    p.add_argument("--peer", action="store_true", help="also run libspn-keras 0.6.0 (own venv)")
    p.add_argument("--scaling", action="store_true", help="run the scaling study (and plot)")
    p.add_argument("--no-main", action="store_true", help="skip the main throughput table")
    p.add_argument("--archs", nargs="*", choices=list(ARCHS))
    p.add_argument("--ops", nargs="*", choices=list(OPS))
    p.add_argument("--jit", choices=["both", "on", "off"], default="both",
                   help="jit_compile setting(s) for the main table "
                        "(scaling uses 'off' unless 'on')")
    p.add_argument("--batches", nargs="*", type=int,
                   help="batch sizes of the main table (default 64 128 512; --quick: 64 128)")
    p.add_argument("--max-step-seconds", type=float, default=MAX_STEP_SECONDS)
    p.add_argument("--rounds", type=int, default=1,
                   help="run each library this many times per net and op, alternating "
                        "(with --peer: the ratio of the medians and the range of the "
                        "rounds' own ratios)")
    p.add_argument("--tag", default="", help="suffix for the result files (throughput<tag>.json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.worker:
        sys.path.insert(0, str(ROOT))
        return run_worker(args)

    RESULTS.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    loads = []

    def log(msg):
        loads.append(os.getloadavg()[0])
        print(f"[{time.time() - t_start:7.1f} s] {msg}", flush=True)

    meta = dict(date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.machine(),
                cpu=cpu_model(), cpus=os.cpu_count(), python=platform.python_version(),
                mode="quick" if args.quick else "full", **git_state())
    probe = subprocess.run([sys.executable, "-c",
                            "import tensorflow as tf, json; print(json.dumps("
                            "[tf.__version__, "
                            "[d.device_type for d in tf.config.list_logical_devices()]]))"],
                           capture_output=True, text=True,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        meta["tf_version"], meta["devices"] = json.loads(probe.stdout.strip().splitlines()[-1])
    except Exception:  # noqa: BLE001
        meta["tf_version"], meta["devices"] = "?", "?"

    out_json = RESULTS / f"throughput{args.tag}.json"
    payload = json.loads(out_json.read_text()) if out_json.exists() and args.no_main else {}
    if not args.no_main:
        def save(partial):
            meta["loadavg_range"] = f"{min(loads):.1f}-{max(loads):.1f}"
            out_json.write_text(json.dumps(dict(meta=meta, results=partial, complete=False),
                                           indent=1))
            write_markdown(partial, meta, RESULTS / f"throughput{args.tag}.md")

        results = main_benchmark(args, log, save)
        meta["loadavg_range"] = f"{min(loads):.1f}-{max(loads):.1f}"
        payload = dict(meta=meta, results=results)
        write_markdown(results, meta, RESULTS / f"throughput{args.tag}.md")
        log(f"wrote {RESULTS / f'throughput{args.tag}.md'}")
        if args.peer:
            table = best_rows(results)
            print("\nskspn / libspn-keras (best jit of each):")
            for (lib, arch, op, batch), by_jit in sorted(table.items()):
                if lib != "skspn":
                    continue
                peer = table.get(("libspn-keras", arch, op, batch), {})
                best, peer_best = fastest_row(by_jit), fastest_row(peer)
                s, q = best and best["images_per_s"], peer_best and peer_best["images_per_s"]
                print(f"  {arch:20s} {op:8s} b{batch:<4d} "
                      + (f"{s / q:6.2f}x  ({s:.1f} vs {q:.1f} img/s)" if s and q else "n/a"))
    if args.scaling:
        rows = scaling_benchmark(args, log)
        payload["scaling"] = rows
        plot_scaling(rows, RESULTS / f"throughput_scaling{args.tag}.png", log)
        (RESULTS / f"throughput_scaling{args.tag}.md").write_text(scaling_markdown(rows))
    payload.setdefault("meta", meta)
    out_json.write_text(json.dumps(payload, indent=1))
    log(f"wrote {out_json}")


if __name__ == "__main__":
    main()
