"""Independent brute-force reference computations for the core tests.

Nothing here calls the TensorFlow forward or backward pass of ``skspn.core``: a network is
re-implemented in float64 numpy from its *geometry* (the resolved ``AxisOp`` of every
product: kernel, stride, dilation, padding, ``out_start``/``out_size``; the channel
combinations of one-hot products; the accumulators of every sum layer, normalised here
in float64; the full-scope top window). Queries are then answered by enumeration and by an explicit
top-down recursion written here.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import logsumexp


def all_states(n_vars: int) -> np.ndarray:
    """All ``2**n_vars`` binary vectors ``[2**n_vars, n_vars]``, first variable most significant."""
    return np.array(list(itertools.product([0.0, 1.0], repeat=n_vars)), dtype=np.float64)


def completions(row: np.ndarray) -> np.ndarray:
    """All binary completions of the NaN entries of ``row`` (any shape), ``[n, *row.shape]``."""
    row = np.asarray(row, dtype=np.float64)
    flat = row.reshape(-1)
    hidden = np.flatnonzero(np.isnan(flat))
    fills = all_states(len(hidden))
    out = np.repeat(flat[None], len(fills), axis=0)
    out[:, hidden] = fills
    return out.reshape((len(fills),) + row.shape)


def bernoulli_leaf_lp(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per-component log-probabilities of binary ``x`` ``[B, H, W]`` (NaN = marginalised).

    ``logits`` ``[H, W, K]`` are logits of P(x = 1). Returns ``[B, H, W, K]``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    lp1 = -np.logaddexp(0.0, -logits)  # log sigmoid(l)
    lp0 = -np.logaddexp(0.0, logits)  # log sigmoid(-l)
    x = np.asarray(x, dtype=np.float64)[..., None]
    val = np.where(x == 1.0, lp1[None], lp0[None])
    return np.where(np.isnan(x), 0.0, val)


def normalised_log_weights(layer) -> np.ndarray:
    """float64 log-weights ``[N | 1, C_in, C_out]`` of a sum layer, from its accumulators.

    As documented (DESIGN.md section 3): log-space accumulators are normalised by a
    softmax over the inputs, counts by ``(c + eps) / sum_j (c_j + eps)`` with
    ``eps = 1e-2 / C_in``.
    """
    acc = layer.accumulator.numpy().astype(np.float64)
    if layer.log_space:
        return acc - logsumexp(acc, axis=1, keepdims=True)
    c = np.maximum(acc, 0.0) + 1e-2 / acc.shape[1]
    return np.log(c) - np.log(c.sum(axis=1, keepdims=True))


class NumpySPN:
    """float64 numpy re-implementation of a (Bernoulli-leaf) ``DGCSPN``.

    Only the geometry and parameters are read from the TF network; all evaluation,
    differentiation (finite differences) and top-down traversal is done here.
    """

    def __init__(self, net):
        leaf = net.leaf
        self.logits = leaf.logits.numpy()[:, :, 0, 0, :].astype(np.float64)  # [H, W, K]
        self.shape = tuple(net.spatial_shape)
        self.layers = []
        for p in net.products:
            axes = p.axes
            kernels = [op.kernel for op in axes]
            offsets = list(itertools.product(*[range(k) for k in kernels]))
            n_children = len(offsets)
            combos = None
            if p.resolved.spec.mode == "one_hot" and n_children > 1:
                if p.channel_index is None:
                    combos = np.array(list(itertools.product(range(p.in_channels),
                                                             repeat=n_children)))
                else:
                    combos = np.asarray(p.channel_index.numpy()).T  # [C_out, n_children]
                assert combos.shape == (p.out_channels, n_children)
            out_shape = tuple(op.out_size for op in axes)
            self.layers.append(dict(axes=axes, offsets=offsets, combos=combos,
                                    out_shape=out_shape))
        self.log_w = [normalised_log_weights(layer) for layer in net.weight_layers]
        self.n_sums = len(net.sums)
        self.n_classes = net.n_classes
        self.top_index = net.report.top_index

    # ------------------------------------------------------------------ forward
    def leaf_lp(self, x):
        return bernoulli_leaf_lp(self.logits, x)

    def _product(self, i, x):
        g = self.layers[i]
        pads = [(0, 0)] + [(op.pad_before, op.pad_after) for op in g["axes"]] + [(0, 0)]
        xp = np.pad(x, pads, constant_values=0.0)  # padding cells are log 1
        children = []
        for off in g["offsets"]:
            idx = [(op.out_start + np.arange(n)) * op.stride + a * op.dilation
                   for op, a, n in zip(g["axes"], off, g["out_shape"])]
            children.append(xp[:, idx[0]][:, :, idx[1]])
        if g["combos"] is None:
            return np.sum(children, axis=0)
        return np.sum([c[..., g["combos"][:, j]] for j, c in enumerate(children)], axis=0)

    @staticmethod
    def _reduce(z, axis, mode):
        return logsumexp(z, axis=axis) if mode == "sum" else np.max(z, axis=axis)

    def _sum(self, lw, x, mode):
        b, h, w, c = x.shape
        xf = x.reshape(b, h * w, c)
        z = xf[:, :, :, None] + lw[None]  # [B, N, C, O] (lw [N | 1, C, O] broadcasts)
        return self._reduce(z, 2, mode).reshape(b, h, w, -1)

    def forward_values(self, leaf_lp, log_w=None, mode="sum"):
        """All node values: ``prods[i]``, ``sums[i]``, ``top_in``, ``top``, ``root``."""
        log_w = self.log_w if log_w is None else log_w
        x = leaf_lp
        prods, sums = [], []
        for i in range(len(self.layers)):
            x = self._product(i, x)
            prods.append(x)
            if i < self.n_sums:
                x = self._sum(log_w[i], x, mode)
                sums.append(x)
        (h0, nh), (w0, nw) = self.top_index
        top_in = x[:, h0:h0 + nh, w0:w0 + nw].reshape(x.shape[0], -1)
        top = self._reduce(top_in[:, :, None] + log_w[self.n_sums][0][None], 1, mode)
        if self.n_classes:
            root = self._reduce(top + log_w[self.n_sums + 1][0, :, 0][None], 1, mode)
        else:
            root = top[:, 0]
        return dict(leaf=leaf_lp, prods=prods, sums=sums, top_in=top_in, top=top, root=root)

    def log_likelihood(self, x, mode="sum"):
        return self.forward_values(self.leaf_lp(x), mode=mode)["root"]

    # ------------------------------------------------------------------ soft counts
    def soft_counts(self, x, h=1e-5, weight=None):
        """d sum_b weight_b log S(x_b) / d log w, by central finite differences (float64)."""
        leaf_lp = self.leaf_lp(x)
        weight = np.ones(len(x)) if weight is None else np.asarray(weight, np.float64)
        counts = []
        for li, lw in enumerate(self.log_w):
            grad = np.zeros_like(lw)
            for idx in np.ndindex(*lw.shape):
                vals = []
                for sign in (1.0, -1.0):
                    pert = [w.copy() for w in self.log_w]
                    pert[li][idx] += sign * h
                    vals.append(weight @ self.forward_values(leaf_lp, pert)["root"])
                grad[idx] = (vals[0] - vals[1]) / (2.0 * h)
            counts.append(grad)
        return counts

    # ------------------------------------------------------------------ structure
    def top_input_classes(self):
        """Equivalence classes of the top sums' inputs ``[n_top_inputs]``.

        Full padding makes some cells *copies* of a node below (a product cell whose
        other children are all padding is its single real child; with shared sum
        weights, sums over copies are copies again), so several top inputs can be the
        same function of the input. Such children tie exactly on their values and an
        unweighted argmax cannot tell them apart: counts are then only defined up to the
        class. Classes are found by evaluating the top inputs on every binary state and
        grouping identical columns.
        """
        n_vars = self.shape[0] * self.shape[1]
        x = all_states(n_vars).reshape((-1,) + self.shape)
        rng = np.random.default_rng(0)
        x_nan = np.where(rng.random(x.shape) < 0.3, np.nan, x)
        vals = self.forward_values(self.leaf_lp(np.concatenate([x, x_nan])))["top_in"]
        _, classes = np.unique(np.round(vals, 9), axis=1, return_inverse=True)
        return classes.reshape(-1)

    # ------------------------------------------------------------------ top-down
    def top_down(self, x, choice="hard", mode="sum"):
        """Explicit top-down traversal from the root, one induced tree per sample.

        ``choice``: ``'hard'`` picks at every sum node reached the child maximising
        child value + log w, ``'hard_unweighted'`` the child maximising the child value.
        ``mode``: node values from the sum-product (``'sum'``) or max-product (``'max'``)
        forward pass.

        Returns ``(counts, leaf_selection [B, H, W, K], min_gap)`` where ``counts`` has
        one array per sum layer (shape of its log-weights) counting the (node, chosen
        child) pairs, and ``min_gap`` is the smallest margin between the chosen child's
        score and the runner-up (to detect near-ties).
        """
        vals = self.forward_values(self.leaf_lp(x), mode=mode)
        counts = [np.zeros_like(lw) for lw in self.log_w]
        b_size = x.shape[0]
        h, w = self.shape
        k = self.logits.shape[-1]
        leaf_sel = np.zeros((b_size, h, w, k))
        gaps = []

        def choose(scores, classes=None):
            order = np.argsort(scores)[::-1]
            if classes is not None:  # the runner-up must be a *different* node
                order = [order[0]] + [i for i in order if classes[i] != classes[order[0]]]
            if len(order) > 1:
                gaps.append(scores[order[0]] - scores[order[1]])
            return int(order[0])

        def score(child_vals, lw_col):
            return child_vals + lw_col if choice == "hard" else child_vals

        def descend_product(b, i, r, s, c):
            g = self.layers[i]
            in_shape = (vals["leaf"] if i == 0 else vals["sums"][i - 1]).shape[1:3]
            for j, off in enumerate(g["offsets"]):
                pos = []
                for op, a, p in zip(g["axes"], off, (r, s)):
                    pos.append((op.out_start + p) * op.stride + a * op.dilation - op.pad_before)
                if not (0 <= pos[0] < in_shape[0] and 0 <= pos[1] < in_shape[1]):
                    continue  # padding cell: constant 1, no node below
                ch = c if g["combos"] is None else int(g["combos"][c, j])
                if i == 0:
                    leaf_sel[b, pos[0], pos[1], ch] += 1
                else:
                    descend_sum(b, i - 1, pos[0], pos[1], ch)

        def descend_sum(b, i, r, s, o):
            child = vals["prods"][i][b, r, s]  # [C_in]
            lw = self.log_w[i]
            n_w = vals["prods"][i].shape[2]
            cell = 0 if lw.shape[0] == 1 else r * n_w + s
            c = choose(score(child, lw[cell, :, o]))
            counts[i][cell, c, o] += 1
            descend_product(b, i, r, s, c)

        last = len(self.layers) - 1  # the last product feeds the top sums directly
        (h0, nh), (w0, nw) = self.top_index
        n_ch = vals["top_in"].shape[1] // (nh * nw)
        for b in range(b_size):
            if self.n_classes:
                prior = self.log_w[self.n_sums + 1][0, :, 0]
                cls = choose(score(vals["top"][b], prior))
                counts[self.n_sums + 1][0, cls, 0] += 1
            else:
                cls = 0
            j = choose(score(vals["top_in"][b], self.log_w[self.n_sums][0, :, cls]),
                       self.top_input_classes() if choice == "hard_unweighted" else None)
            counts[self.n_sums][0, j, cls] += 1
            r, rest = divmod(j, nw * n_ch)
            s, c = divmod(rest, n_ch)
            r, s = r + h0, s + w0
            if not self.layers:
                leaf_sel[b, r, s, c] += 1
            else:
                descend_product(b, last, r, s, c)
        min_gap = min(gaps) if gaps else np.inf
        return counts, leaf_sel, min_gap
