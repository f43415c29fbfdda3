"""Symbolic scopes, validity checks and the architecture planner.

A DGC-SPN is a stack of spatial layers on a grid of *cells*; all channels of a cell share
one scope. Products combine ``prod(kernel)`` cells chosen by kernel offset, stride,
dilation and padding, so a cell's scope is the Cartesian product of one set of input
positions per spatial axis. Everything here is therefore done per axis with boolean masks
``[n_cells, n_inputs]``, which is exact (no interval approximation) and tiny.

Nothing in this module touches TensorFlow: an invalid configuration is rejected with a
``ValueError`` before any tensor is built.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np

#: How many overlapping product layers may be stacked beyond the minimum needed for
#: full scope. Each extra layer adds full-scope top cells (more decompositions of the
#: image) but full padding grows the maps by ``(k - 1) * dilation`` cells per axis, so
#: the cost grows quickly; two extra layers already multiply the top cells ~10x.
MAX_EXTRA_LAYERS = 2


#: ``AxisOp.out_size`` before ``resolve``: keep every output cell of the padded input.
ALL_CELLS = -1
#: ``AxisOp.out_size`` before ``resolve`` ('final' padding): keep only the output cells
#: whose scope is the whole input along the axis.
FULL_SCOPE_CELLS = -2


@dataclasses.dataclass(frozen=True)
class AxisOp:
    """What one product layer does along one spatial axis.

    ``out_start``/``out_size`` select a contiguous range of the output cells that the
    padded, strided, dilated product would produce (used by ``final`` padding).
    """

    kernel: int
    stride: int = 1
    dilation: int = 1
    pad_before: int = 0
    pad_after: int = 0
    out_start: int = 0
    out_size: int = ALL_CELLS  # a count after ``resolve``; before, ALL_CELLS or FULL_SCOPE_CELLS

    def n_out_unpadded(self, n_in: int) -> int:
        n_padded = n_in + self.pad_before + self.pad_after
        span = (self.kernel - 1) * self.dilation + 1
        if n_padded < span:
            return 0
        return (n_padded - span) // self.stride + 1

    def child_positions(self, n_out: int) -> np.ndarray:
        """Indices into the *padded* input, shape ``[n_out, kernel]``."""
        out = np.arange(self.out_start, self.out_start + n_out)[:, None] * self.stride
        return out + np.arange(self.kernel)[None, :] * self.dilation


IDENTITY = AxisOp(kernel=1)


@dataclasses.dataclass(frozen=True)
class ProductSpec:
    """A generalised convolutional log-product (GCLP) layer, one ``AxisOp`` per axis.

    ``mode`` is ``'one_hot'`` (each output channel takes one channel from every child
    cell: all combinations, or a seeded random subset of ``n_channels`` of them) or
    ``'depthwise'`` (channel c from every child: sum pooling in log space).
    """

    axes: tuple
    mode: str = "depthwise"
    n_channels: int | None = None  # one-hot only: size of the random subset (None = all)
    name: str = "product"

    @property
    def kernel(self):
        return tuple(op.kernel for op in self.axes)


@dataclasses.dataclass(frozen=True)
class ResolvedProduct:
    spec: ProductSpec  # its AxisOps with out_start / out_size filled in
    in_shape: tuple
    out_shape: tuple

    @property
    def axes(self):
        return self.spec.axes


@dataclasses.dataclass(frozen=True)
class ScopeReport:
    """Result of the symbolic pass over a product stack."""

    input_shape: tuple
    products: tuple  # ResolvedProduct per layer
    top_index: tuple  # per axis: (start, size) of the full-scope top cells
    top_shape: tuple
    axis_scopes: tuple  # per axis: bool [n_top_cells_axis, n_inputs_axis] at the top

    @property
    def n_top_cells(self) -> int:
        return int(np.prod(self.top_shape))


def _axis_name(axis: int, n_axes: int) -> str:
    if n_axes == 2:
        return ("height", "width")[axis]
    return f"axis {axis}"


def _contiguous(idx: np.ndarray, what: str) -> tuple:
    if idx.size == 0:
        raise ValueError(f"{what}: no cell has full scope")
    if not np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        raise ValueError(f"{what}: the full-scope cells are not contiguous ({idx.tolist()})")
    return int(idx[0]), int(idx.size)


def _axis_forward(mask: np.ndarray, op: AxisOp, n_out: int) -> tuple:
    """Scope masks of the output cells along one axis and the pairwise overlap table.

    Returns ``(out_mask [n_out, n_inputs], overlap [k, k], children [n_out, k,
    n_inputs])`` where ``overlap[a, b]`` says whether children at kernel offsets ``a`` and
    ``b`` share an input position for some output cell (``a == b``: whether that child is
    ever non-empty) and ``children`` holds each output cell's children's scope masks.
    """
    n_in, n_inputs = mask.shape
    padded = np.zeros((n_in + op.pad_before + op.pad_after, n_inputs), dtype=bool)
    padded[op.pad_before:op.pad_before + n_in] = mask
    children = padded[op.child_positions(n_out)]  # [n_out, k, n_inputs]
    out_mask = children.any(axis=1)
    overlap = np.einsum("oai,obi->ab", children.astype(np.int64), children.astype(np.int64)) > 0
    return out_mask, overlap, children


def resolve(input_shape: Sequence[int], products: Sequence[ProductSpec]) -> ScopeReport:
    """Run the symbolic scope pass over a product stack and validate it.

    Checks that every product combines children with pairwise disjoint scopes
    (decomposability), resolves ``final`` crops to full-scope cells, and selects the
    full-scope top cells that may feed the root (completeness of the root sum: all its
    children then have the identical, full scope).

    Raises
    ------
    ValueError
        Naming the layer, the axis and the overlapping kernel offsets / cells.
    """
    input_shape = tuple(int(n) for n in input_shape)
    n_axes = len(input_shape)
    masks = [np.eye(n, dtype=bool) for n in input_shape]
    resolved = []
    for layer, spec in enumerate(products):
        if len(spec.axes) != n_axes:
            raise ValueError(
                f"product layer {layer} ({spec.name}) has {len(spec.axes)} axes, "
                f"the input has {n_axes}")
        in_shape = tuple(m.shape[0] for m in masks)
        overlaps, children_all, out_masks, new_axes = [], [], [], []
        for ax, (mask, op) in enumerate(zip(masks, spec.axes)):
            if op.kernel < 1 or op.stride < 1 or op.dilation < 1:
                raise ValueError(
                    f"product layer {layer}: kernel, stride and dilation must be >= 1 "
                    f"along the {_axis_name(ax, n_axes)} (got {op})")
            n_full = op.n_out_unpadded(mask.shape[0])
            if n_full < 1:
                raise ValueError(
                    f"product layer {layer}: kernel {op.kernel} with dilation {op.dilation} "
                    f"does not fit the {mask.shape[0]} cells along the "
                    f"{_axis_name(ax, n_axes)} (padding {op.pad_before}+{op.pad_after})")
            op_full = dataclasses.replace(op, out_start=0, out_size=n_full)
            out_mask, overlap, children = _axis_forward(mask, op_full, n_full)
            if op.out_size == FULL_SCOPE_CELLS:  # 'final' padding
                start, size = _contiguous(
                    _distinct_cells(np.flatnonzero(out_mask.all(axis=1)), op_full, mask.shape[0]),
                    f"product layer {layer} ({_axis_name(ax, n_axes)}, final padding)")
                op_full = dataclasses.replace(op, out_start=start, out_size=size)
                out_mask, overlap, children = _axis_forward(mask, op_full, size)
            elif op.out_size >= 0:
                op_full = op
                out_mask, overlap, children = _axis_forward(mask, op, op.out_size)
            overlaps.append(overlap)
            children_all.append(children)
            out_masks.append(out_mask)
            new_axes.append(op_full)
        _check_decomposable(layer, spec, overlaps, children_all, n_axes)
        masks = out_masks
        resolved.append(ResolvedProduct(
            spec=dataclasses.replace(spec, axes=tuple(new_axes)), in_shape=in_shape,
            out_shape=tuple(m.shape[0] for m in masks)))
    top_index = tuple(
        _contiguous(np.flatnonzero(m.all(axis=1)), f"top ({_axis_name(ax, n_axes)})")
        for ax, m in enumerate(masks))
    top_shape = tuple(size for _, size in top_index)
    axis_scopes = tuple(m[s:s + n] for m, (s, n) in zip(masks, top_index))
    return ScopeReport(input_shape=input_shape, products=tuple(resolved),
                       top_index=top_index, top_shape=top_shape, axis_scopes=axis_scopes)


def _distinct_cells(cells, op, n_in):
    """Drop output cells that repeat another's set of real (non-padding) children.

    With full padding a border cell whose other children are all padding is a copy of its
    one real child, and the same child can be copied at both borders: such duplicates add
    no decomposition, only cost and a double share of the root's initial weight.
    """
    positions = op.child_positions(int(cells.max()) + 1 if cells.size else 0)
    seen, keep = set(), []
    for o in cells:
        real = tuple(int(p) - op.pad_before for p in positions[o]
                     if op.pad_before <= p < op.pad_before + n_in)
        if real not in seen:
            seen.add(real)
            keep.append(o)
    return np.array(keep, dtype=np.int64)


def _check_decomposable(layer, spec, overlaps, children_all, n_axes):
    """Children at offset vectors ``a != b`` overlap iff they overlap on every axis.

    A cell's scope is the product of its per-axis scopes, and every combination of
    per-axis output positions is an output cell, so the check separates over axes.
    """
    kernels = [ov.shape[0] for ov in overlaps]
    offsets = list(itertools.product(*[range(k) for k in kernels]))
    if len(offsets) < 2:
        return
    off = np.array(offsets)  # [n_off, n_axes]
    conflict = np.ones((len(offsets), len(offsets)), dtype=bool)
    for ax, ov in enumerate(overlaps):
        conflict &= ov[off[:, ax][:, None], off[:, ax][None, :]]
    np.fill_diagonal(conflict, False)
    if not conflict.any():
        return
    i, j = np.argwhere(conflict)[0]
    a, b = offsets[i], offsets[j]
    cells = []
    for ax, children in enumerate(children_all):
        both = (children[:, a[ax]] & children[:, b[ax]]).any(axis=1)
        cells.append(int(np.flatnonzero(both)[0]))
    shared = [int(np.flatnonzero(children_all[ax][cells[ax], a[ax]]
                                 & children_all[ax][cells[ax], b[ax]])[0])
              for ax in range(n_axes)]
    raise ValueError(
        f"product layer {layer} ({spec.name}, kernel {spec.kernel}, dilations "
        f"{tuple(op.dilation for op in spec.axes)}) is not decomposable: at output cell "
        f"{tuple(cells)} the children at kernel offsets {a} and {b} both contain input "
        f"position {tuple(shared)}; on an overlapping grid each dilation must be the "
        f"product of the preceding kernel sizes")


# --------------------------------------------------------------------------- planner


def _whole(value, name, low=0):
    """``value`` as an int if it is a whole number (not a bool) of at least ``low``, else a
    ValueError naming ``name`` (``int()`` would silently truncate 2.7 to 2)."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < low):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _as_axis_tuple(value, n_axes, name, low=0):
    if np.ndim(value) == 0:
        return (_whole(value, name, low),) * n_axes
    value = tuple(_whole(v, name, low) for v in value)
    if len(value) != n_axes:
        raise ValueError(f"{name} needs one value per spatial axis ({n_axes}), got {value}")
    return value


def _levels_needed(size: int, k: int) -> int:
    levels, field = 0, 1
    while field < size:
        field *= k
        levels += 1
    return levels


def _nonoverlapping_ops(size: int, k: int, n_max: int) -> list:
    ops = []
    while len(ops) < n_max and k > 1 and size > k:
        pad = (-size) % k  # pad at the end so every pixel lands in some cell
        ops.append(AxisOp(kernel=k, stride=k, pad_after=pad))
        size = (size + pad) // k
    return ops


def _size_after(size: int, ops) -> int:
    for op in ops:
        size = (size + op.pad_after) // op.stride
    return size


def max_depth(input_shape, kernel_size=2, n_nonoverlapping=0) -> int:
    """Largest ``depth`` the planner accepts for this input (documented maximum)."""
    return min_depth(input_shape, kernel_size, n_nonoverlapping) + MAX_EXTRA_LAYERS


def min_depth(input_shape, kernel_size=2, n_nonoverlapping=0) -> int:
    """Number of product layers ``depth='auto'`` uses: just enough for full scope."""
    n_axes = len(input_shape)
    kernels = _as_axis_tuple(kernel_size, n_axes, "kernel_size")
    no_ops = [_nonoverlapping_ops(n, k, n_nonoverlapping) for n, k in zip(input_shape, kernels)]
    n_no = max(len(o) for o in no_ops)
    need = max(_levels_needed(_size_after(n, o), k)
               for n, o, k in zip(input_shape, no_ops, kernels))
    return n_no + need


def plan_products(input_shape, depth="auto", kernel_size=2, n_nonoverlapping=0,
                  first_product="one_hot", one_hot_max_channels=256):
    """Plan a valid product stack for an input of ``input_shape`` cells.

    Parameters
    ----------
    input_shape : tuple of int
        Spatial shape, e.g. ``(28, 28)`` or ``(1, 100)``.
    depth : int or 'auto'
        Number of product layers. ``'auto'`` is the minimum that reaches full scope.
        Fewer: the last product's kernel grows until it reaches full scope. More (at most
        ``MAX_EXTRA_LAYERS`` more): extra overlapping layers add full-scope top cells.
    kernel_size : int or tuple of int
        Kernel size per axis (axes of size 1 always use 1).
    n_nonoverlapping : int
        Stride = kernel layers first (applied along an axis only while it has more cells
        than the kernel); then unit strides, dilations ``1, k, k^2, ...`` and full padding.
    first_product : {'one_hot', 'depthwise'}
        Channel mode of the first product; the others are depthwise.
    one_hot_max_channels : int
        A one-hot product with more channel combinations than this keeps a seeded random
        subset of this size.

    Returns
    -------
    products : list of ProductSpec
    """
    input_shape = tuple(int(n) for n in input_shape)
    n_axes = len(input_shape)
    if any(n < 1 for n in input_shape):
        raise ValueError(f"input shape must have at least one cell per axis, got {input_shape}")
    if first_product not in ("one_hot", "depthwise"):
        raise ValueError(f"first_product must be 'one_hot' or 'depthwise', got {first_product!r}")
    if not (isinstance(depth, str) and depth == "auto"):
        if isinstance(depth, (bool, np.bool_)) or not isinstance(depth, (int, np.integer)):
            raise ValueError(f"depth must be an integer >= 0 or 'auto', got {depth!r}")
    n_nonoverlapping = _whole(n_nonoverlapping, "n_nonoverlapping")
    one_hot_max_channels = _whole(one_hot_max_channels, "one_hot_max_channels", low=1)
    kernels = _as_axis_tuple(kernel_size, n_axes, "kernel_size", low=2)
    for ax, (n, k) in enumerate(zip(input_shape, kernels)):
        if k > n and n > 1:
            raise ValueError(
                f"kernel_size {k} is larger than the image ({n} cells along the "
                f"{_axis_name(ax, n_axes)})")
    # Axes with a single cell never combine anything.
    kernels = tuple(k if n > 1 else 1 for n, k in zip(input_shape, kernels))
    lo = min_depth(input_shape, kernels_or_two(kernels), n_nonoverlapping)
    if depth == "auto":
        depth = lo
    depth = int(depth)
    hi = max_depth(input_shape, kernels_or_two(kernels), n_nonoverlapping)
    if depth < 0:
        raise ValueError(f"depth must be an integer >= 0 or 'auto', got {depth}")
    if depth > hi:
        raise ValueError(
            f"depth={depth} is too large for an input of shape {input_shape}: at most {hi} "
            f"product layers ({lo} reach full scope, plus at most {MAX_EXTRA_LAYERS} extra "
            f"overlapping layers, since full padding grows the maps)")
    if depth == 0:
        if any(n > 1 for n in input_shape):
            raise ValueError(f"depth=0 only fits a single-cell input, got shape {input_shape}")
        return []

    # Non-overlapping layers, reduced until at least one layer is left for the rest.
    n_no_max = n_nonoverlapping
    while True:
        no_ops = [_nonoverlapping_ops(n, k, n_no_max) for n, k in zip(input_shape, kernels)]
        n_no = max(len(o) for o in no_ops)
        sizes = [_size_after(n, o) for n, o in zip(input_shape, no_ops)]
        if depth - n_no >= (1 if any(s > 1 for s in sizes) else 0) or n_no == 0:
            break
        n_no_max = n_no - 1
    n_ov = depth - n_no
    need = [_levels_needed(s, k) for s, k in zip(sizes, kernels)]
    max_need = max(need)
    n_extra = max(n_ov - max_need, 0)

    axis_ops = []
    for ax in range(n_axes):
        ops = list(no_ops[ax]) + [IDENTITY] * (n_no - len(no_ops[ax]))
        size, k = sizes[ax], kernels[ax]
        ov = []
        if size > 1:
            if need[ax] <= n_ov:
                real = [k] * need[ax]
                fill = max_need - need[ax] if n_ov >= max_need else n_ov - need[ax]
                fill = max(fill, 0)
                kernels_ax = real + [1] * fill + [k] * n_extra
            else:  # too few layers: the last kernel grows to reach full scope
                field = k ** (n_ov - 1)
                kernels_ax = [k] * (n_ov - 1) + [math.ceil(size / field)]
            dilation = 1
            last_real = max(i for i, kk in enumerate(kernels_ax) if kk > 1)
            for i, kk in enumerate(kernels_ax):
                if kk == 1:
                    ov.append(IDENTITY)
                    continue
                final = i == last_real
                ov.append(AxisOp(kernel=kk, dilation=dilation,
                                 pad_before=(kk - 1) * dilation, pad_after=(kk - 1) * dilation,
                                 out_size=FULL_SCOPE_CELLS if final else ALL_CELLS))
                dilation *= kk
        ov += [IDENTITY] * (n_ov - len(ov))
        axis_ops.append(ops + ov)

    products = []
    for layer in range(depth):
        axes = tuple(axis_ops[ax][layer] for ax in range(n_axes))
        mode = first_product if layer == 0 else "depthwise"
        products.append(ProductSpec(axes=axes, mode=mode, name=f"product_{layer}",
                                    n_channels=one_hot_max_channels if mode == "one_hot" else None))
    return products


def kernels_or_two(kernels):
    # min_depth needs a kernel >= 2 on every axis for its level count; single-cell axes
    # (kernel 1) need no levels anyway.
    return tuple(max(k, 2) for k in kernels)


def product_spec(kernel, strides=None, dilations=None, padding="valid", mode="depthwise",
                 n_channels=None, name="product"):
    """Build a ``ProductSpec`` from conventional arguments.

    ``padding`` is ``'valid'`` (none), ``'full'`` (``(k - 1) * d`` cells of log-prob 0 on
    each side), ``'final'`` (full, then keep only output cells with full scope) or an
    explicit per-axis sequence of ``(before, after)`` pairs.
    """
    kernel = tuple(_whole(k, "kernel", low=1) for k in kernel)
    n_axes = len(kernel)
    strides = _as_axis_tuple(1 if strides is None else strides, n_axes, "strides", low=1)
    dilations = _as_axis_tuple(1 if dilations is None else dilations, n_axes, "dilations",
                               low=1)
    if mode not in ("depthwise", "one_hot"):
        raise ValueError(f"mode must be 'depthwise' or 'one_hot', got {mode!r}")
    if n_channels is not None:
        n_channels = _whole(n_channels, "n_channels", low=1)
    if not isinstance(padding, str):
        pairs = ([tuple(pair) if np.ndim(pair) == 1 else () for pair in padding]
                 if np.ndim(padding) >= 1 else [])
        if len(pairs) != n_axes or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"padding needs one (before, after) pair per axis ({n_axes}), "
                             f"got {padding!r}")
        padding = [tuple(_whole(p, "padding", low=0) for p in pair) for pair in pairs]
    axes = []
    for ax in range(n_axes):
        k, s, d = kernel[ax], strides[ax], dilations[ax]
        if isinstance(padding, str):
            if padding not in ("valid", "full", "final"):
                raise ValueError(f"padding must be 'valid', 'full', 'final' or explicit pairs, "
                                 f"got {padding!r}")
            p = 0 if padding == "valid" else (k - 1) * d
            pads = (p, p)
            out_size = FULL_SCOPE_CELLS if padding == "final" else ALL_CELLS
        else:
            pads = tuple(padding[ax])
            out_size = ALL_CELLS
        axes.append(AxisOp(kernel=k, stride=s, dilation=d, pad_before=pads[0],
                           pad_after=pads[1], out_size=out_size))
    return ProductSpec(axes=tuple(axes), mode=mode, n_channels=n_channels, name=name)
