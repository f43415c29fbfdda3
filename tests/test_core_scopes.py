"""Scope checker and architecture planner (``skspn.core.scopes``), pure numpy.

The reference here is a naive 2-D, set-based recursion over cells: every cell's scope is
an explicit ``frozenset`` of ``(row, col)`` pixels, products take the union of their
children (read off the kernel offsets, stride, dilation and padding) and are
decomposable iff the children's sets are pairwise disjoint. It shares nothing with the
per-axis boolean masks of ``scopes.resolve``.
"""

import itertools
import re

import numpy as np
import pytest

from skspn.core.scopes import (
    ALL_CELLS,
    FULL_SCOPE_CELLS,
    MAX_EXTRA_LAYERS,
    AxisOp,
    ProductSpec,
    max_depth,
    min_depth,
    plan_products,
    product_spec,
    resolve,
)

SQUARES = [(n, n) for n in range(1, 65)]
STRIPS = [(1, n) for n in range(1, 101)]
EXPLICIT_SIZES = [1, 2, 3, 5, 7, 8, 13, 28, 64]


# --------------------------------------------------------------------------- naive reference


class NaiveInvalid(Exception):
    def __init__(self, layer, kind):
        super().__init__(f"layer {layer}: {kind}")
        self.layer, self.kind = layer, kind


def _n_full(op, n_in):
    padded = n_in + op.pad_before + op.pad_after
    span = (op.kernel - 1) * op.dilation + 1
    return (padded - span) // op.stride + 1 if padded >= span else 0


def _child_cell(op, out_pos, offset):
    """Unpadded input index of the child at ``offset`` of output position ``out_pos``."""
    return out_pos * op.stride + offset * op.dilation - op.pad_before


def naive_scopes(input_shape, specs, require_top=True):
    """Set-based scope pass. Returns ``(grid, crops, shape)``.

    ``grid`` is a dict ``(r, c) -> frozenset`` of pixels for the last layer's cells;
    ``crops[layer][axis]`` is ``(out_start, out_size)`` of the cells that were kept;
    ``shape`` the last layer's ``(rows, columns)``.
    Raises ``NaiveInvalid`` for a kernel that does not fit, a non-decomposable product,
    a 'final' crop without (contiguous) full-scope cells, or (``require_top``) top
    full-scope cells that do not form one non-empty rectangle (the network feeds the
    root from a rectangular window of top cells).
    """
    h, w = input_shape
    full = frozenset(itertools.product(range(h), range(w)))
    grid = {(r, c): frozenset({(r, c)}) for r in range(h) for c in range(w)}
    shape = (h, w)
    crops = []
    for layer, spec in enumerate(specs):
        ops = spec.axes
        n_out = [_n_full(op, n) for op, n in zip(ops, shape)]
        if min(n_out) < 1 or any(op.kernel < 1 or op.stride < 1 or op.dilation < 1 for op in ops):
            raise NaiveInvalid(layer, "fit")
        out = {}
        for r in range(n_out[0]):
            for c in range(n_out[1]):
                kids = []
                for a in range(ops[0].kernel):
                    for b in range(ops[1].kernel):
                        pr, pc = _child_cell(ops[0], r, a), _child_cell(ops[1], c, b)
                        inside = 0 <= pr < shape[0] and 0 <= pc < shape[1]
                        kids.append(grid[(pr, pc)] if inside else frozenset())
                out[(r, c)] = kids
        # 'final' (FULL_SCOPE_CELLS) keeps, per axis, the positions whose projection of the
        # scope covers the whole image along that axis.
        keep = []
        for ax, op in enumerate(ops):
            positions = range(n_out[ax])
            if op.out_size == FULL_SCOPE_CELLS:
                covered = []
                for p in positions:
                    proj = set()
                    for key, kids in out.items():
                        if key[ax] == p:
                            for kid in kids:
                                proj |= {px[ax] for px in kid}
                    if len(proj) == input_shape[ax]:
                        covered.append(p)
                # Border cells whose real children repeat an earlier cell's are copies
                # of it (their other children are padding): 'final' drops them.
                seen, distinct = set(), []
                for p in covered:
                    real = tuple(q for q in (_child_cell(op, p, a) for a in range(op.kernel))
                                 if 0 <= q < shape[ax])
                    if real not in seen:
                        seen.add(real)
                        distinct.append(p)
                covered = distinct
                if not covered or covered != list(range(covered[0], covered[-1] + 1)):
                    raise NaiveInvalid(layer, "final")
                keep.append((covered[0], len(covered)))
            elif op.out_size >= 0:
                keep.append((op.out_start, op.out_size))
            else:
                keep.append((0, n_out[ax]))
        crops.append(tuple(keep))
        (r0, nr), (c0, nc) = keep
        new = {}
        for r in range(nr):
            for c in range(nc):
                kids = out[(r0 + r, c0 + c)]
                union = frozenset().union(*kids)
                if sum(len(k) for k in kids) != len(union):
                    raise NaiveInvalid(layer, "decomposable")
                new[(r, c)] = union
        grid, shape = new, (nr, nc)
    if require_top:
        cells = {key for key, s in grid.items() if s == full}
        rows = sorted({r for r, _ in cells})
        cols = sorted({c for _, c in cells})
        if (not cells or cells != {(r, c) for r in rows for c in cols}
                or rows != list(range(rows[0], rows[-1] + 1))
                or cols != list(range(cols[0], cols[-1] + 1))):
            raise NaiveInvalid(len(specs), "top")
    return grid, crops, shape


def naive_top(grid, shape, input_shape):
    full = frozenset(itertools.product(range(input_shape[0]), range(input_shape[1])))
    cells = [key for key, s in grid.items() if s == full]
    rows = sorted({r for r, _ in cells})
    cols = sorted({c for _, c in cells})
    rect = {(r, c) for r in rows for c in cols}
    return cells, rows, cols, rect


def check_against_naive(input_shape, specs):
    """resolve() and the naive pass must agree on crops, shapes and the top window."""
    report = resolve(input_shape, specs)
    grid, crops, shape = naive_scopes(input_shape, specs)
    for layer, (rp, crop) in enumerate(zip(report.products, crops)):
        got = tuple((op.out_start, op.out_size) for op in rp.axes)
        assert got == crop, (layer, got, crop)
        assert tuple(rp.out_shape) == tuple(n for _, n in crop)
    assert tuple(shape) == tuple(report.products[-1].out_shape) if specs else True
    cells, rows, cols, rect = naive_top(grid, shape, input_shape)
    # Full-scope top cells form a rectangle, which is exactly the reported top window.
    assert set(cells) == rect
    (h0, nh), (w0, nw) = report.top_index
    assert rows == list(range(h0, h0 + nh)) and cols == list(range(w0, w0 + nw))
    assert report.top_shape == (nh, nw)
    # Per-axis scopes of the top cells (Cartesian) reproduce the naive sets.
    sh, sw = report.axis_scopes
    for r in range(nh):
        for c in range(nw):
            expect = {(i, j) for i in np.flatnonzero(sh[r]) for j in np.flatnonzero(sw[c])}
            assert grid[(h0 + r, w0 + c)] == expect
    return report


# --------------------------------------------------------------------------- rejections


def test_two_full_padding_layers_in_a_row_are_rejected_with_layer_and_offsets():
    specs = [product_spec((2, 2), padding="full", name="first"),
             product_spec((2, 2), padding="full", name="second")]
    with pytest.raises(NaiveInvalid):
        naive_scopes((4, 4), specs)
    with pytest.raises(ValueError) as info:
        resolve((4, 4), specs)
    msg = str(info.value)
    assert "product layer 1" in msg and "second" in msg and "not decomposable" in msg
    # The message names two kernel offsets, an output cell and a shared input position:
    # check with the naive sets that those two children really overlap there.
    m = re.search(r"output cell \((\d+), (\d+)\) the children at kernel offsets "
                  r"\((\d+), (\d+)\) and \((\d+), (\d+)\) both contain input position "
                  r"\((\d+), (\d+)\)", msg)
    assert m, msg
    r, c, a0, a1, b0, b1, p, q = map(int, m.groups())
    assert (a0, a1) != (b0, b1)
    grid1, _, _ = naive_scopes((4, 4), specs[:1], require_top=False)
    ops = specs[1].axes

    def child(off):
        key = (_child_cell(ops[0], r, off[0]), _child_cell(ops[1], c, off[1]))
        return grid1.get(key, frozenset())

    assert (p, q) in child((a0, a1)) & child((b0, b1))


def test_valid_dilated_pair_is_accepted_where_undilated_pair_is_not():
    # Same stack with the second dilation fixed to the product of preceding kernels.
    specs = [product_spec((2, 2), padding="full"),
             product_spec((2, 2), dilations=2, padding="final")]
    check_against_naive((4, 4), specs)
    bad = [product_spec((2, 2), padding="full"),
           product_spec((2, 2), dilations=3, padding="final")]
    with pytest.raises(ValueError, match="product layer 1"):
        resolve((4, 4), bad)


def test_kernel_larger_than_image_is_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        resolve((2, 2), [product_spec((3, 3))])
    with pytest.raises(ValueError, match="does not fit"):
        resolve((1, 4), [product_spec((1, 2), dilations=(1, 4))])
    with pytest.raises(ValueError, match="larger than the image"):
        plan_products((4, 4), kernel_size=5)
    with pytest.raises(ValueError, match="larger than the image"):
        plan_products((1, 3), kernel_size=4)


def test_depth_above_max_depth_is_rejected_naming_the_maximum():
    # Full scope with 2x2 kernels needs ceil(log2(side)) dilated layers after the
    # non-overlapping stride-2 ones (28 -> 14 -> 7: 3 more; 13 -> 7 -> 4: 2 more).
    for shape, n_no, lo in [((1, 1), 0, 0), ((2, 2), 0, 1), ((7, 5), 0, 3), ((28, 28), 2, 5),
                            ((1, 100), 0, 7), ((64, 64), 0, 6), ((13, 13), 2, 4)]:
        assert min_depth(shape, 2, n_no) == lo
        hi = max_depth(shape, 2, n_no)
        assert hi == lo + MAX_EXTRA_LAYERS
        plan_products(shape, depth=hi, n_nonoverlapping=n_no)  # the maximum itself is fine
        with pytest.raises(ValueError) as info:
            plan_products(shape, depth=hi + 1, n_nonoverlapping=n_no)
        assert f"at most {hi}" in str(info.value)


def test_scope_errors_stop_before_any_tensor_is_built():
    # An invalid stack must be rejected by the network constructor too (via resolve).
    from skspn.core import DGCSPN, BernoulliLeaf

    leaf = BernoulliLeaf(np.zeros((4, 4, 1, 2)))
    specs = [product_spec((2, 2), padding="full"), product_spec((2, 2), padding="full")]
    with pytest.raises(ValueError, match="not decomposable"):
        DGCSPN((4, 4), leaf, specs, [2])


# --------------------------------------------------------------------------- planner sweep


def _check_planned(shape, depth, n_no):
    specs = plan_products(shape, depth=depth, n_nonoverlapping=n_no)
    expected = min_depth(shape, 2, n_no) if depth == "auto" else depth
    assert len(specs) == expected
    report = resolve(shape, specs)
    assert report.n_top_cells >= 1
    for ax, sc in enumerate(report.axis_scopes):
        assert sc.shape == (report.top_shape[ax], shape[ax])
        assert sc.all(), (shape, depth, n_no)
    return report


@pytest.mark.parametrize("n_no", [0, 2])
def test_planner_auto_depth_all_squares_and_strips(n_no):
    for shape in SQUARES + STRIPS:
        _check_planned(shape, "auto", n_no)


@pytest.mark.parametrize("n_no", [0, 2])
def test_planner_every_explicit_depth(n_no):
    shapes = [(n, n) for n in EXPLICIT_SIZES] + [(1, n) for n in EXPLICIT_SIZES]
    shapes += [(7, 5), (5, 7), (3, 28), (2, 64)]
    for shape in shapes:
        for depth in range(1, max_depth(shape, 2, n_no) + 1):
            _check_planned(shape, depth, n_no)


def test_planned_7x5_matches_naive_set_recursion():
    specs = plan_products((7, 5))
    report = check_against_naive((7, 5), specs)
    assert report.n_top_cells >= 1


@pytest.mark.parametrize("shape", [(7, 5), (1, 7), (6, 4), (3, 3), (2, 5), (5, 1)])
@pytest.mark.parametrize("n_no", [0, 1])
def test_planned_small_shapes_every_depth_match_naive(shape, n_no):
    for depth in range(1, max_depth(shape, 2, n_no) + 1):
        for first in ("one_hot", "depthwise"):
            specs = plan_products(shape, depth=depth, n_nonoverlapping=n_no, first_product=first)
            check_against_naive(shape, specs)


def _random_stack(rng):
    """A random hand-made stack, biased towards (but not always) valid geometry."""
    shape = (int(rng.integers(1, 7)), int(rng.integers(1, 7)))
    n_layers = int(rng.integers(1, 5))
    next_dilation = [1, 1]
    specs = []
    for layer in range(n_layers):
        last = layer == n_layers - 1
        final = last and rng.random() < 0.6
        axes = []
        for ax in range(2):
            k = int(rng.integers(1, 4))
            if not final and rng.random() < 0.3:  # non-overlapping: stride = kernel
                pad_after = int(rng.integers(0, k))
                axes.append(AxisOp(kernel=k, stride=k, pad_after=pad_after))
                next_dilation[ax] = 1
                continue
            d = next_dilation[ax] if rng.random() < 0.75 else int(rng.integers(1, 5))
            if rng.random() < 0.8:
                pad = ((k - 1) * d, (k - 1) * d)
            else:
                pad = tuple(int(p) for p in rng.integers(0, (k - 1) * d + 1, size=2))
            stride = 1 if rng.random() < 0.85 else 2
            axes.append(AxisOp(kernel=k, stride=stride, dilation=d, pad_before=pad[0],
                               pad_after=pad[1], out_size=FULL_SCOPE_CELLS if final else ALL_CELLS))
            next_dilation[ax] = d * k
        specs.append(ProductSpec(axes=tuple(axes), name=f"layer{layer}"))
    return shape, specs


def test_random_hand_made_stacks_agree_with_naive_checker():
    """resolve() accepts exactly the stacks the naive set recursion accepts, and then
    agrees with it on every crop and on the top window."""
    rng = np.random.default_rng(1234)
    n_valid = n_invalid = n_decomp = 0
    for _ in range(2000):
        shape, specs = _random_stack(rng)
        try:
            naive_scopes(shape, specs)
            naive_ok, err = True, None
        except NaiveInvalid as exc:
            naive_ok, err = False, exc
        if naive_ok:
            check_against_naive(shape, specs)
            n_valid += 1
        else:
            with pytest.raises(ValueError) as info:
                resolve(shape, specs)
            if err.kind == "decomposable":
                assert f"product layer {err.layer}" in str(info.value)
                assert "not decomposable" in str(info.value)
                n_decomp += 1
            n_invalid += 1
    # The sample must exercise both outcomes substantially.
    assert n_valid >= 100 and n_invalid >= 300 and n_decomp >= 100, (n_valid, n_invalid, n_decomp)


@pytest.mark.parametrize("call, message", [
    (lambda: plan_products((8, 8), depth=2.7), r"depth must be an integer >= 0 or 'auto'"),
    (lambda: plan_products((8, 8), depth=True), r"depth must be an integer"),
    (lambda: plan_products((8, 8), n_nonoverlapping=-1), r"n_nonoverlapping must be an integer"),
    (lambda: plan_products((8, 8), first_product="foo"), r"first_product must be"),
    (lambda: plan_products((8, 8), kernel_size=2.5), r"kernel_size must be an integer >= 2"),
    (lambda: plan_products((8, 8), kernel_size=(2, 1)), r"kernel_size must be an integer >= 2"),
    (lambda: plan_products((8, 8), one_hot_max_channels=0), r"one_hot_max_channels"),
    (lambda: product_spec((2, 2), padding=1), r"one \(before, after\) pair per axis"),
    (lambda: product_spec((2, 2), padding=((1, 1),)), r"one \(before, after\) pair per axis"),
    (lambda: product_spec((2, 2), padding=((-1, 1), (0, 0))), r"padding must be an integer"),
    (lambda: product_spec((2, 2), n_channels=2.5), r"n_channels must be an integer"),
    (lambda: product_spec((2, 2), strides=0), r"strides must be an integer >= 1"),
    (lambda: product_spec((2, 2), mode="both"), r"mode must be"),
])
def test_planner_arguments_are_checked_not_truncated(call, message):
    # Fractions were truncated (depth 2.7 -> 2) and bad values failed later with numpy or
    # Python errors (or not at all: n_nonoverlapping=-1 acted as 0).
    with pytest.raises(ValueError, match=message):
        call()
