"""Image inpainting with DGC-SPNs: the protocol of Table 1 of the DGC-SPN paper (section 5.1).

Train a generative DGC-SPN (``skspn.DGCSPNImputer``) on unlabelled images, hide the left or
the bottom half of each test image and complete it from the other half. The score is the MSE
on the 0..255 pixel scale over the hidden pixels only, averaged per image, then over images.

Two per-image standardisations of the test images are reported, clearly labelled:

* ``honest``: mean / std from the *observed* pixels only (``standardize='sample'`` with the
  hidden half passed as NaN) -- nothing about the hidden half is used.
* ``reference``: mean / std from the *whole* image (what the reference code did; it leaks the
  hidden half's brightness and contrast). The test image is standardised here, passed to the
  network with the hidden half NaN and ``standardize=None``, and the completion is mapped back
  with the full-image mean / std.

Training images are complete, so per-image standardisation of the training set is the same in
both protocols: one fitted network serves both (``standardize`` is switched to ``None`` only
while computing the reference completions; 'sample' standardisation has no fitted state).

Baselines on the same masks: ``SimpleImputer(mean)``, ``KNNImputer(5)``, ``IterativeImputer``
(BayesianRidge, few iterations, ``n_nearest_features`` limited for speed).

Usage::

    python benchmarks/inpainting.py --quick --datasets mnist,fashion,olivetti
    python benchmarks/inpainting.py --full --datasets mnist
    python benchmarks/inpainting.py --ablation --ablation-datasets mnist,olivetti

Results go to ``benchmarks/results/inpainting_{quick,full,ablation}.{json,md}`` and figures to
``benchmarks/results/inpainting_{mode}_{dataset}.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from _provenance import cpu_model, git_state

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Single-threaded BLAS: multi-threaded OpenBLAS made BayesianRidge (IterativeImputer) ~30x
# slower on this shared 2-core machine. TensorFlow uses its own thread pool.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The data next to the checkout (../shared/data from the repository root) unless
# SKSPN_DATA says otherwise.
os.environ.setdefault("SKSPN_DATA", os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")))

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MASKS = ("bottom", "left")
PROTOCOLS = ("honest", "reference")
LEARNINGS = {"usi": "hard_em_unweighted", "weighted": "hard_em"}
#: Our best honest set-up from the ablation (inpainting_ablation_feature_epoch.md):
#: (label, parameters, description for the tables).
TUNED = ("usi, feature std, epoch EM",
         {"learning": "hard_em_unweighted", "standardize": "feature", "em_update": "epoch"},
         "USI with per-pixel standardisation fitted on the training images "
         "(`standardize='feature'`) and one EM update per epoch (`em_update='epoch'`); no "
         "per-image statistics, so honest protocol only.")


# --------------------------------------------------------------------------- datasets
@dataclass
class DatasetSpec:
    """How to load one dataset, its architectures and the paper's Table 1 numbers."""

    name: str
    side: int
    #: (n_train, n_test, epochs) per mode; ``None`` = all images.
    sizes: dict
    #: architecture name -> (estimator parameters, description)
    architectures: dict
    #: learning key ('usi' / 'weighted') -> {'bottom': mse, 'left': mse}, quoted from the paper
    paper: dict = field(default_factory=dict)


ARCH_28 = {"paper": ({"depth": 6, "first_product": "one_hot", "sum_channels": 16},
                     "one-hot first product, depthwise after; sums of 16; dilations 1,2,4,8,16 "
                     "then a final d=32 product (depth=6)")}

DATASETS = {
    "mnist": DatasetSpec(
        "mnist", 28,
        sizes={"quick": (1000, 200, 3), "full": (None, None, 15)},
        architectures=ARCH_28,
        paper={"usi": {"bottom": 2996, "left": 2476}, "weighted": {"bottom": 3767, "left": 3102}}),
    "fashion": DatasetSpec(
        "fashion", 28,
        sizes={"quick": (1000, 200, 3), "full": (None, None, 15)},
        architectures=ARCH_28,
        paper={"usi": {"bottom": 2223, "left": 1637}, "weighted": {"bottom": 2870, "left": 2268}}),
    "olivetti": DatasetSpec(
        "olivetti", 64,
        sizes={"quick": (350, 50, 3), "full": (350, 50, 25)},
        architectures={
            "A": ({"depth": 7, "first_product": "one_hot", "sum_channels": 16},
                  "variant A: one-hot first product, depthwise after; sums of 16; dilations "
                  "1..32 then a final d=64 product (depth=7)"),
            "B~": ({"depth": 7, "first_product": "depthwise", "sum_channels": 2},
                   "approximation of variant B: depthwise first product, sums of 2, dilations "
                   "1..32 then final d=64 (depth=7); the authors' later products were one-hot, "
                   "ours are depthwise (skspn supports one-hot only as the first product)"),
        },
        paper={"usi": {"bottom": 735, "left": 811}, "weighted": {"bottom": 804, "left": 847}}),
}


def load_dataset(name, n_train, n_test, seed):
    """Return ``(X_train, X_test)`` as float64 arrays on the 0..255 scale, one row per image.

    MNIST / Fashion-MNIST: the standard train and test sets (a seeded random subset when
    ``n_train`` / ``n_test`` are given). Olivetti: the first 350 images train, the last 50 test
    (Poon & Domingos split).
    """
    from skspn import datasets

    if name == "olivetti":
        data = datasets.load_olivetti().data.astype(np.float64)
        train, test = data[:350], data[350:]
    else:
        loader = {"mnist": datasets.load_mnist, "fashion": datasets.load_fashion_mnist}[name]
        train = loader(subset="train").data.astype(np.float64)
        test = loader(subset="test").data.astype(np.float64)
    rng = np.random.RandomState(seed)
    if n_train is not None and n_train < len(train):
        train = train[np.sort(rng.choice(len(train), n_train, replace=False))]
    if n_test is not None and n_test < len(test):
        test = test[np.sort(rng.choice(len(test), n_test, replace=False))]
    return train, test


def hidden_mask(side, which):
    """Boolean ``side*side`` vector, True for the hidden pixels of the 'left' or 'bottom' half."""
    mask = np.zeros((side, side), bool)
    if which == "left":
        mask[:, : side // 2] = True
    elif which == "bottom":
        mask[side // 2:, :] = True
    else:
        raise ValueError(f"unknown mask {which!r}")
    return mask.ravel()


def mse_hidden(pred, true, mask):
    """MSE over the hidden pixels, per image then averaged; also the standard error."""
    per_image = ((pred[:, mask] - true[:, mask]) ** 2).mean(axis=1)
    return float(per_image.mean()), float(per_image.std(ddof=1) / np.sqrt(len(per_image)))


def score_prediction(pred, true, mask):
    """Scores of one completion: raw predictions and predictions clipped to [0, 255]."""
    mse, sem = mse_hidden(pred, true, mask)
    clipped, _ = mse_hidden(np.clip(pred, 0, 255), true, mask)
    return {"mse": mse, "sem": sem, "mse_clipped": clipped}


# --------------------------------------------------------------------------- standardisation
def full_image_stats(X):
    """Per-image mean and std over all pixels (a std within the round-off of the mean
    counts as none, as in skspn's 'sample' mode)."""
    mean = X.mean(axis=1, keepdims=True)
    std = X.std(axis=1, keepdims=True)
    std = np.where(std > X.shape[1] * np.finfo(np.float64).eps * np.abs(mean), std, 1.0)
    return mean, std


@contextlib.contextmanager
def standardize_as(estimator, mode):
    """Temporarily set ``estimator.standardize`` (valid because 'sample' has no fitted state;
    an ``n_networks > 1`` imputer scales once with its own setting, not its networks')."""
    old = estimator.standardize
    estimator.set_params(standardize=mode)
    try:
        yield estimator
    finally:
        estimator.set_params(standardize=old)


def spn_complete(imputer, X_test, mask, protocol, method="marginal"):
    """Complete the hidden pixels of ``X_test`` (0..255 scale) with a fitted SPN imputer."""
    if protocol == "honest":
        X_missing = X_test.copy()
        X_missing[:, mask] = np.nan
        return imputer.impute(X_missing, method=method, random_state=0)
    mean, std = full_image_stats(X_test)
    Z = (X_test - mean) / std
    Z[:, mask] = np.nan
    with standardize_as(imputer, None):
        completed = imputer.impute(Z, method=method, random_state=0)
    return completed * std + mean


# --------------------------------------------------------------------------- models
def fit_spn(X_train, params, epochs, batch_size, tol, seed, verbose):
    """Fit a ``DGCSPNImputer`` (per-image standardisation unless ``params`` say otherwise);
    returns (imputer, seconds)."""
    from skspn import DGCSPNImputer

    params = dict({"standardize": "sample"}, **params)
    imputer = DGCSPNImputer(max_epochs=epochs, batch_size=batch_size, tol=tol,
                            random_state=seed, verbose=verbose, **params)
    t0 = time.time()
    imputer.fit(X_train)
    return imputer, time.time() - t0


def evaluate_spn(imputer, X_test, side, protocols=PROTOCOLS, methods=("marginal",)):
    """Scores (and completions) per protocol, completion method and mask."""
    scores, completions, seconds = {}, {}, {}
    for protocol in protocols:
        for method in methods:
            key = protocol if method == "marginal" else f"{protocol}/{method}"
            scores[key], t0 = {}, time.time()
            for which in MASKS:
                mask = hidden_mask(side, which)
                pred = spn_complete(imputer, X_test, mask, protocol, method)
                scores[key][which] = score_prediction(pred, X_test, mask)
                completions[(key, which)] = pred
            seconds[key] = time.time() - t0
    if hasattr(imputer, "estimators_") and "honest" in protocols:
        scores.update(ensemble_scores(imputer, X_test, side))
    return scores, completions, seconds


def ensemble_scores(imputer, X_test, side):
    """Other completions from the networks of an ``n_networks > 1`` imputer (honest
    protocol): the networks alone (their mean MSE and the best one) and the posterior mean
    of their mixture (each network weighted by its likelihood of the observed half)."""
    out = {"honest/single networks, mean": {}, "honest/single networks, best": {},
           "honest/posterior mixture": {}}
    for which in MASKS:
        mask = hidden_mask(side, which)
        X_missing = X_test.copy()
        X_missing[:, mask] = np.nan
        preds = np.stack([e.impute(X_missing, random_state=0) for e in imputer.estimators_])
        singles = [score_prediction(p, X_test, mask) for p in preds]
        out["honest/single networks, mean"][which] = {
            k: float(np.mean([s[k] for s in singles])) for k in singles[0]}
        out["honest/single networks, best"][which] = min(singles, key=lambda s: s["mse"])
        log_lik = np.stack([e.score_samples(X_missing) for e in imputer.estimators_])
        weights = np.exp(log_lik - log_lik.max(axis=0))
        weights /= weights.sum(axis=0)
        mixture = np.einsum("mn,mnf->nf", weights, preds)
        out["honest/posterior mixture"][which] = score_prediction(mixture, X_test, mask)
    return out


def make_baselines(iterative_max_iter, n_nearest):
    """The scikit-learn baseline imputers, by name (each a zero-argument factory)."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
    from sklearn.linear_model import BayesianRidge

    return {
        "SimpleImputer(mean)": lambda: SimpleImputer(strategy="mean"),
        "KNNImputer(k=5)": lambda: KNNImputer(n_neighbors=5),
        # tol=0: fitted on complete images, nothing changes between rounds, so the default
        # stopping rule ends the fit after one round, and transform then runs one round
        # only (as the first runs of this script did, labelled max_iter=3); with tol=0 the
        # fit keeps max_iter rounds and transform runs all of them on the test images.
        f"IterativeImputer(BayesianRidge, max_iter={iterative_max_iter}, "
        f"n_nearest_features={n_nearest})": lambda: IterativeImputer(
            estimator=BayesianRidge(), max_iter=iterative_max_iter, tol=0,
            n_nearest_features=n_nearest, random_state=0, skip_complete=False),
    }


def run_baselines(X_train, X_test, side, iterative_max_iter, n_nearest, names=None):
    """Fit each baseline on the (complete) training images and score it on both masks."""
    results = {}
    for name, factory in make_baselines(iterative_max_iter, n_nearest).items():
        if names is not None and not any(name.startswith(n) for n in names):
            continue
        t0 = time.time()
        model = factory().fit(X_train)
        fit_seconds = time.time() - t0
        results[name] = {"fit_seconds": fit_seconds}
        if hasattr(model, "n_iter_"):
            results[name]["n_iter"] = int(model.n_iter_)  # rounds that transform runs
        for which in MASKS:
            mask = hidden_mask(side, which)
            X_missing = X_test.copy()
            X_missing[:, mask] = np.nan
            t0 = time.time()
            pred = model.transform(X_missing)
            results[name][which] = score_prediction(pred, X_test, mask)
            results[name][which]["transform_seconds"] = time.time() - t0
        print(f"  {name}: bottom {results[name]['bottom']['mse']:.0f} "
              f"left {results[name]['left']['mse']:.0f} ({time.time() - t0 + fit_seconds:.0f}s)",
              flush=True)
    return results


# --------------------------------------------------------------------------- figure
def write_figure(path, X_test, completions, side, n_images=8):
    """Figure-4-like mosaic: originals; masked and completed for 'left'; same for 'bottom'."""
    from skspn._png import tile_images, write_png

    idx = np.arange(min(n_images, len(X_test)))
    rows = [X_test[idx]]
    for which in ("left", "bottom"):
        masked = X_test[idx].copy()
        masked[:, hidden_mask(side, which)] = np.nan
        rows += [masked, completions[which][idx]]
    images = np.concatenate(rows).reshape(-1, side, side)
    write_png(path, tile_images(images, n_cols=len(idx), pad=2))


# --------------------------------------------------------------------------- runs
def versions():
    """Library versions recorded with every result."""
    import sklearn
    import tensorflow as tf

    import skspn
    return {**git_state(), "cpu": cpu_model(), "python": platform.python_version(),
            "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "tensorflow": tf.__version__, "skspn": skspn.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count()}


def make_setups(args):
    """``(label, estimator parameters, protocols)`` of the SPN set-ups to fit.

    ``args.setups``: comma-separated ``usi``, ``weighted`` (the paper's set-ups, per-image
    standardisation, both protocols) or ``tuned`` (``TUNED``, honest protocol only), each
    optionally ``:N`` for N networks averaged (``n_networks``). Default: all three, plus
    ``tuned:N`` for ``--n-networks N``.
    """
    spec = args.setups or ",".join(
        ["usi", "weighted", "tuned"] + [f"tuned:{args.n_networks}"] * (args.n_networks > 1))
    setups = []
    for item in spec.split(","):
        name, _, n = item.strip().partition(":")
        if name not in (*LEARNINGS, "tuned") or (n and not n.isdigit()):
            raise SystemExit(f"unknown set-up {item!r} in --setups (usi, weighted or tuned, "
                             "optionally :N with N a number of networks)")
        if name in LEARNINGS:
            label, params, protocols = name, {"learning": LEARNINGS[name], "em_update":
                                              args.em_update, "standardize": "sample"}, PROTOCOLS
        else:
            label, params, protocols = TUNED[0], dict(TUNED[1]), ("honest",)
        if n and int(n) > 1:
            label, params = f"{label}, {int(n)} networks", dict(params, n_networks=int(n))
        setups.append((label, params, protocols))
    return setups


def run_dataset(spec, mode, args):
    """Train every architecture x learning on one dataset, score SPNs and baselines."""
    n_train, n_test, epochs = spec.sizes[mode]
    n_train = args.n_train or n_train
    n_test = args.n_test or n_test
    epochs = args.epochs or epochs
    tol = None if mode == "quick" else 0.1
    # Bad --setups / --architectures stop the run before any data is loaded.
    setups = make_setups(args)
    architectures = args.architectures.split(",") if args.architectures else list(
        spec.architectures)
    unknown = set(architectures) - set(spec.architectures)
    if unknown:
        raise SystemExit(f"{spec.name} has no architecture {sorted(unknown)}; it has "
                         f"{list(spec.architectures)}")
    X_train, X_test = load_dataset(spec.name, n_train, n_test, args.seed)
    print(f"[{spec.name}] train {X_train.shape} test {X_test.shape} epochs {epochs}", flush=True)
    out = {"n_train": len(X_train), "n_test": len(X_test), "epochs": epochs,
           "batch_size": args.batch_size, "tol": tol, "em_update": args.em_update,
           "data_seed": args.seed, "paper_table1": spec.paper, "models": [], "baselines": {}}
    figure_completions = None
    for arch in ([] if args.baselines_only else architectures):
        params, description = spec.architectures[arch]
        for key, setup, protocols in setups:
            p = dict(params, **setup)
            imputer, fit_seconds = fit_spn(X_train, p, epochs, args.batch_size, tol,
                                           args.seed, args.verbose)
            scores, completions, eval_seconds = evaluate_spn(imputer, X_test, spec.side,
                                                             protocols)
            out["models"].append({
                "architecture": arch, "description": description, "learning": key,
                "params": dict(p, max_epochs=epochs, batch_size=args.batch_size, tol=tol,
                               random_state=args.seed),
                "n_iter": imputer.n_iter_, "train_log_likelihood": list(imputer.history_),
                "fit_seconds": fit_seconds, "eval_seconds": eval_seconds, "scores": scores})
            print(f"  SPN {arch} {key}: " + "; ".join(
                f"{prot} bottom {scores[prot]['bottom']['mse']:.0f} left "
                f"{scores[prot]['left']['mse']:.0f}" for prot in protocols)
                + f" (fit {fit_seconds:.0f}s)", flush=True)
            if figure_completions is None:
                figure_completions = {w: completions[("honest", w)] for w in MASKS}
    # Baselines see the same training images as the SPN (a subset in quick mode).
    out["baselines"] = run_baselines(X_train, X_test, spec.side, args.iterative_max_iter,
                                     args.n_nearest_features)
    out["figure"] = None
    if figure_completions is not None:
        fig = os.path.join(RESULTS_DIR, f"inpainting_{mode}{args.tag}_{spec.name}.png")
        write_figure(fig, X_test, figure_completions, spec.side)
        out["figure"] = os.path.relpath(fig, os.path.dirname(RESULTS_DIR))
    return out


def baseline_seconds(b):
    """Fit plus transform time of one baseline (KNNImputer does its work in transform)."""
    return b["fit_seconds"] + sum(b[w].get("transform_seconds", 0.0) for w in MASKS)


def markdown_main(result):
    """Markdown tables: our SPNs (both protocols) beside the baselines and the paper."""
    lines = [f"# Inpainting, {result['mode']} mode", "",
             "MSE on the 0..255 scale over the hidden pixels, per image then averaged "
             "(± standard error over test images). *honest*: test images standardised with "
             "statistics of the observed half only; *reference*: with statistics of the "
             "whole image (the reference code's leak). Paper numbers are **quoted from the "
             "paper's Table 1** (full training sets, 15-25 epochs, averaged over 5 runs), "
             "not re-run.", ""]
    lines += [f"> Note: {n}" for n in result.get("notes", [])] + [""] * bool(result.get("notes"))
    for name, ds in result["datasets"].items():
        lines += [f"## {name}", "",
                  f"train {ds['n_train']} images, test {ds['n_test']}, {ds['epochs']} epochs, "
                  f"batch {ds['batch_size']}, em_update={ds['em_update']}, "
                  f"tol={ds['tol']}, data seed {ds['data_seed']}."
                  + (f" Figure: `{ds['figure']}`." if ds.get("figure") else ""), "",
                  "| method | protocol | bottom | left | time s (fit + impute) |",
                  "|---|---|---|---|---|"]
        for m in ds["models"]:
            for prot in m["scores"]:  # protocols, then other completions (n_networks)
                s = m["scores"][prot]
                lines.append(f"| DGC-SPN {m['architecture']} {m['learning']} | {prot} | "
                             f"{s['bottom']['mse']:.0f} ± {s['bottom']['sem']:.0f} | "
                             f"{s['left']['mse']:.0f} ± {s['left']['sem']:.0f} | "
                             f"{m['fit_seconds'] + sum(m['eval_seconds'].values()):.0f} |")
        for bname, b in ds["baselines"].items():
            if "n_iter" in b:
                bname += f" ({b['n_iter']} rounds)"
            lines.append(f"| {bname} | - | {b['bottom']['mse']:.0f} ± {b['bottom']['sem']:.0f} | "
                         f"{b['left']['mse']:.0f} ± {b['left']['sem']:.0f} | "
                         f"{baseline_seconds(b):.0f} |")
        for key, p in ds["paper_table1"].items():
            lines.append(f"| paper Table 1 (quoted), DGC-SPN {key} | (reference code) | "
                         f"{p['bottom']} | {p['left']} | |")
        lines.append("")
        if ds["models"]:  # none with --baselines-only
            lines += ["Architectures: " + "; ".join(
                f"**{a}** = {d}" for a, d in {m["architecture"]: m["description"]
                                              for m in ds["models"]}.items()), ""]
        if any(m["learning"].startswith(TUNED[0]) for m in ds["models"]):
            lines += [f"*{TUNED[0]}*: {TUNED[2]}", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- ablation
#: One factor at a time around the base configuration; each entry: (label, param overrides).
ABLATION_GRID = [
    ("base", {}),
    ("leaf_scale=0.5", {"leaf_scale": 0.5}),
    ("leaf_scale=0.25", {"leaf_scale": 0.25}),
    ("n_components=8", {"n_components": 8}),
    ("em_update=epoch", {"em_update": "epoch"}),
    ("depth=min", {"depth": "min"}),
    ("em_update=epoch + n_components=8", {"em_update": "epoch", "n_components": 8}),
    ("epochs x2", {"max_epochs": "x2"}),
    ("sum_channels=32", {"sum_channels": 32}),
    ("depth=min+2", {"depth": "min+2"}),
    ("learning=hard_em (weighted)", {"learning": "hard_em"}),
    ("em_update=epoch + leaf_scale=0.5", {"em_update": "epoch", "leaf_scale": 0.5}),
    ("em_update=epoch + epochs x2", {"em_update": "epoch", "max_epochs": "x2"}),
    ("em_update=epoch + epochs x4", {"em_update": "epoch", "max_epochs": "x4"}),
    # Per-pixel standardisation fitted on the training set: the test image's observed half
    # is scaled exactly as in training, instead of by its own (half-image) statistics.
    ("standardize=feature", {"standardize": "feature"}),
    ("standardize=feature + em_update=epoch", {"standardize": "feature", "em_update": "epoch"}),
    ("feature + epoch + epochs x4", {"standardize": "feature", "em_update": "epoch",
                                     "max_epochs": "x4"}),
    ("feature + epoch + leaf_scale=0.5", {"standardize": "feature", "em_update": "epoch",
                                          "leaf_scale": 0.5}),
    ("feature + epoch + n_components=8", {"standardize": "feature", "em_update": "epoch",
                                          "n_components": 8}),
    ("feature + epoch + sum_channels=32", {"standardize": "feature", "em_update": "epoch",
                                           "sum_channels": 32}),
    # Several independently seeded networks, their completions averaged (n_networks).
    ("feature + epoch + n_networks=4", {"standardize": "feature", "em_update": "epoch",
                                        "n_networks": 4}),
    ("feature + epoch + n_networks=8", {"standardize": "feature", "em_update": "epoch",
                                        "n_networks": 8}),
    ("feature + epoch + sum_channels=32 + n_networks=4", {
        "standardize": "feature", "em_update": "epoch", "sum_channels": 32, "n_networks": 4}),
    # Wider sums, the first one most (results/inpainting_ablation_n10000_wide.md).
    ("feature + epoch + sum_channels=64", {"standardize": "feature", "em_update": "epoch",
                                           "sum_channels": 64}),
    ("feature + epoch + sum_channels=64 + n_networks=4", {
        "standardize": "feature", "em_update": "epoch", "sum_channels": 64, "n_networks": 4}),
    ("feature + epoch + sum_channels=64-32-32-32-16", {
        "standardize": "feature", "em_update": "epoch", "sum_channels": [64, 32, 32, 32, 16]}),
    ("feature + epoch + sum_channels=64-32-32-32-16 + n_networks=4", {
        "standardize": "feature", "em_update": "epoch", "sum_channels": [64, 32, 32, 32, 16],
        "n_networks": 4}),
    ("feature + epoch + sum_channels=64-32-32-32-16 + n_networks=8", {
        "standardize": "feature", "em_update": "epoch", "sum_channels": [64, 32, 32, 32, 16],
        "n_networks": 8}),
    # Soft EM (expected counts) and Adam on the NLL with trained leaf means and scales.
    ("learning=soft_em + em_update=epoch", {"learning": "soft_em", "em_update": "epoch"}),
    ("feature + epoch + soft_em", {"standardize": "feature", "em_update": "epoch",
                                   "learning": "soft_em"}),
    ("learning=gradient + epochs x4", {"learning": "gradient", "max_epochs": "x4"}),
    ("feature + gradient + epochs x4", {"standardize": "feature", "learning": "gradient",
                                        "max_epochs": "x4"}),
]


def ablation_base(spec):
    """Base configuration of the ablation: the paper architecture, USI, online EM."""
    params, _ = next(iter(spec.architectures.values()))
    return dict(params, learning="hard_em_unweighted", em_update="online", leaf_scale=1.0,
                n_components=4)


def resolve_overrides(base, overrides, epochs, min_depth):
    """Apply symbolic overrides ('min', 'min+2', 'x2') to the base parameters."""
    params, ep = dict(base), epochs
    for k, v in overrides.items():
        if k == "max_epochs":
            ep = epochs * int(v.lstrip("x"))
        elif k == "depth":
            params["depth"] = min_depth + (2 if v == "min+2" else 0)
        else:
            params[k] = v
    return params, ep


def run_ablation(args, only=None, previous=None, on_progress=None):
    """One-factor-at-a-time grid (quick-mode data), honest protocol, marginal and MPE.

    ``only``: labels of the grid rows to fit (default all; 'base' is included unless
    ``--no-base``).
    ``previous``: an earlier ablation result; rows with the same label and parameters are
    reused instead of refitted (``--resume``). ``on_progress(result)`` is called after every
    row so partial results can be saved.
    """
    from skspn.core.scopes import min_depth as planner_min_depth

    result = {"mode": "ablation", "versions": versions(), "seed": args.seed, "datasets": {}}
    for name in args.ablation_datasets.split(","):
        spec = DATASETS[name]
        n_train, n_test, epochs = spec.sizes["quick"]
        n_train, n_test, epochs = (args.n_train or n_train, args.n_test or n_test,
                                   args.epochs or epochs)
        X_train, X_test = load_dataset(name, n_train, n_test, args.seed)
        base = ablation_base(spec)
        min_d = planner_min_depth((spec.side, spec.side), (2, 2), 0)
        # Rows of a previous run are reused only if fitted on the same images: the label
        # and parameters alone do not say which training subset or seed they saw.
        old_ds = (previous or {}).get("datasets", {}).get(name, {})
        same_data = ((previous or {}).get("seed") == args.seed
                     and old_ds.get("n_train") == len(X_train)
                     and old_ds.get("n_test") == len(X_test))
        if old_ds and not same_data:
            print(f"  --resume: the stored {name} rows saw other images (n_train, n_test or "
                  "seed differ); refitting them", flush=True)
        done = {r["label"]: r for r in (old_ds.get("rows", []) if same_data else [])}
        rows = []
        result["datasets"][name] = {"n_train": len(X_train), "n_test": len(X_test),
                                    "epochs": epochs, "base": base, "rows": rows,
                                    "baselines": {}, "paper_table1": spec.paper}
        print(f"[ablation {name}] train {X_train.shape} test {X_test.shape}", flush=True)
        for label, overrides in ABLATION_GRID:
            params, ep = resolve_overrides(base, overrides, epochs, min_d)
            old = done.get(label)
            if old is not None and old["params"] == dict(params, max_epochs=ep):
                rows.append(old)  # reused (or kept) from the previous run
                continue
            if only is not None and label not in only and (label != "base" or args.no_base):
                continue
            imputer, fit_seconds = fit_spn(X_train, params, ep, args.batch_size, None,
                                           args.seed, args.verbose)
            methods = ("marginal", "mpe") if label == "base" else ("marginal",)
            scores, _, _ = evaluate_spn(imputer, X_test, spec.side, ("honest",), methods)
            rows.append({"label": label, "params": dict(params, max_epochs=ep),
                         "fit_seconds": fit_seconds, "scores": scores,
                         "train_log_likelihood": list(imputer.history_),
                         "git_commit": git_state()["git_commit"]})
            print(f"  {label}: bottom {scores['honest']['bottom']['mse']:.0f} left "
                  f"{scores['honest']['left']['mse']:.0f} ({fit_seconds:.0f}s)", flush=True)
            if on_progress is not None:
                on_progress(result)
        result["datasets"][name]["baselines"] = run_baselines(
            X_train, X_test, spec.side, args.iterative_max_iter, args.n_nearest_features,
            names=["SimpleImputer", "KNNImputer"])
        if on_progress is not None:
            on_progress(result)
    return result


def markdown_ablation(result):
    """Markdown table of the ablation: one row per change, deltas against the base."""
    lines = ["# Inpainting ablation (quick-mode data, honest protocol)", "",
             "One factor changed at a time from the base configuration. MSE (0..255, hidden "
             "pixels). Δ = change against the first row of each table (the base row unless "
             "the run had `--no-base`; negative is better).", ""]
    lines += [f"> Note: {n}" for n in result.get("notes", [])] + [""] * bool(result.get("notes"))
    for name, ds in result["datasets"].items():
        base = ds["rows"][0]["scores"]["honest"]
        lines += [f"## {name}", "", f"train {ds['n_train']}, test {ds['n_test']}, "
                  f"{ds['epochs']} epochs (unless changed); base = `{ds['base']}`", "",
                  "| change | bottom | Δ | left | Δ | fit s |", "|---|---|---|---|---|---|"]
        for row in ds["rows"]:
            for key, s in row["scores"].items():
                label = row["label"] + ("" if key == "honest" else
                                        f" ({key.split('/', 1)[1].replace('mpe', 'MPE')})")
                lines.append(
                    f"| {label} | {s['bottom']['mse']:.0f} | "
                    f"{s['bottom']['mse'] - base['bottom']['mse']:+.0f} | {s['left']['mse']:.0f} | "
                    f"{s['left']['mse'] - base['left']['mse']:+.0f} | {row['fit_seconds']:.0f} |")
        for bname, b in ds["baselines"].items():
            lines.append(f"| baseline {bname} | {b['bottom']['mse']:.0f} | | "
                         f"{b['left']['mse']:.0f} | | {baseline_seconds(b):.0f} |")
        p = ds["paper_table1"]["usi"]
        lines += [f"| paper Table 1 USI (quoted; full data) | {p['bottom']} | | {p['left']} "
                  "| | |", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def save(result, stem, markdown):
    """Write ``{stem}.json`` and ``{stem}.md`` under benchmarks/results/."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, stem + ".json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(RESULTS_DIR, stem + ".md"), "w") as fh:
        fh.write(markdown(result))
    print(f"wrote {os.path.join(RESULTS_DIR, stem)}.{{json,md}}", flush=True)


def parse_args(argv=None):
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true",
                      help="1000 train / 200 test images for MNIST and Fashion-MNIST, the "
                           "Olivetti 350/50 split, 3 epochs, no early stopping")
    mode.add_argument("--full", action="store_true",
                      help="the paper's settings: full train and test sets, 15 epochs "
                           "(25 for Olivetti), batch 128, tol 0.1")
    mode.add_argument("--ablation", action="store_true",
                      help="one-factor-at-a-time grid on quick-mode data")
    p.add_argument("--datasets", default="mnist,fashion,olivetti",
                   help="comma-separated, of mnist, fashion (or fashion_mnist), olivetti "
                        "(default: %(default)s); data from $SKSPN_DATA")
    p.add_argument("--ablation-datasets", default="mnist",
                   help="the same, for --ablation (default: %(default)s)")
    p.add_argument("--ablation-rows", default=None,
                   help="comma-separated labels of ABLATION_GRID rows to run (default all): "
                        + "; ".join(label for label, _ in ABLATION_GRID))
    p.add_argument("--no-base", action="store_true",
                   help="ablation: fit only the --ablation-rows, not the base row too")
    p.add_argument("--resume", action="store_true",
                   help="ablation: reuse rows of an existing inpainting_ablation JSON")
    p.add_argument("--n-train", type=int, default=None, help="override the train-set size")
    p.add_argument("--n-test", type=int, default=None, help="override the test-set size")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    p.add_argument("--batch-size", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--em-update", choices=("online", "epoch"), default="online",
                   help="EM update of the paper's set-ups: online = the paper's online hard "
                        "EM (default here; the library's default is epoch)")
    p.add_argument("--n-networks", type=int, default=1,
                   help="also fit the tuned set-up with this many networks (n_networks), "
                        "their completions averaged (same as adding tuned:N to --setups; "
                        "not used when --setups is given)")
    p.add_argument("--setups", default=None,
                   help="comma-separated SPN set-ups to fit: usi, weighted, tuned, each "
                        "optionally :N for N networks averaged (default: usi,weighted,tuned "
                        "and tuned:N for --n-networks N)")
    p.add_argument("--architectures", default=None,
                   help="comma-separated architectures to fit (Olivetti: A, B~; default all)")
    p.add_argument("--iterative-max-iter", type=int, default=3)
    p.add_argument("--n-nearest-features", type=int, default=50)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the train / test subsets and the networks (default: 0)")
    p.add_argument("--verbose", type=int, default=0, help="the estimators' verbose")
    p.add_argument("--tag", default="", help="suffix for the output file names (results go "
                                             "to benchmarks/results/inpainting_<mode><tag>.*)")
    p.add_argument("--baselines-only", action="store_true",
                   help="--quick / --full: score the scikit-learn baselines only (no SPN, no "
                        "figure)")
    p.add_argument("--markdown-only", action="store_true",
                   help="only rewrite the .md of the chosen mode from its existing .json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    aliases = {"fashion_mnist": "fashion", "fashion-mnist": "fashion"}  # classification.py's
    args.datasets, args.ablation_datasets = (
        ",".join(aliases.get(name, name) for name in names.split(","))
        for names in (args.datasets, args.ablation_datasets))
    for option, names in (("--datasets", args.datasets),
                          ("--ablation-datasets", args.ablation_datasets)):
        unknown = sorted(set(names.split(",")) - set(DATASETS))
        if unknown:  # before any data is loaded or model fitted
            raise SystemExit(f"unknown {option} {unknown}; choose from {sorted(DATASETS)}")
    if args.markdown_only:
        stem = "inpainting_" + ("ablation" if args.ablation else
                                "quick" if args.quick else "full") + args.tag
        if not os.path.exists(os.path.join(RESULTS_DIR, stem + ".json")):
            raise SystemExit(f"--markdown-only needs {stem}.json in {RESULTS_DIR}; run the "
                             "benchmark first")
        with open(os.path.join(RESULTS_DIR, stem + ".json")) as fh:
            result = json.load(fh)
        with open(os.path.join(RESULTS_DIR, stem + ".md"), "w") as fh:
            fh.write((markdown_ablation if args.ablation else markdown_main)(result))
        return
    if args.ablation:
        stem = "inpainting_ablation" + args.tag

        def progress(result):
            result["total_seconds"] = time.time() - t0
            save(result, stem, markdown_ablation)

        previous = None
        path = os.path.join(RESULTS_DIR, stem + ".json")
        if args.resume and os.path.exists(path):
            with open(path) as fh:
                previous = json.load(fh)
        only = args.ablation_rows.split(",") if args.ablation_rows else None
        unknown = set(only or ()) - {label for label, _ in ABLATION_GRID} - {"base"}
        if unknown:  # before any data is loaded
            raise SystemExit(f"unknown --ablation-rows {sorted(unknown)}; the grid has: "
                             + "; ".join(label for label, _ in ABLATION_GRID))
        run_ablation(args, only=only, previous=previous, on_progress=progress)
        return
    mode = "quick" if args.quick else "full"
    result = {"mode": mode, "versions": versions(), "argv": sys.argv[1:], "datasets": {}}
    stem = f"inpainting_{mode}{args.tag}"
    for name in args.datasets.split(","):
        result["datasets"][name] = run_dataset(DATASETS[name], mode, args)
        result["total_seconds"] = time.time() - t0
        save(result, stem, markdown_main)  # after every dataset: partial results survive


if __name__ == "__main__":
    main()
