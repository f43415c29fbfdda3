"""Generalised convolutional log-product (GCLP) layers.

A product's kernel is one-hot, so in log space a GCLP is a sum of ``prod(kernel)``
shifted (strided, dilated) slices of the padded input, one per kernel offset. No
convolution is needed: dilated ``tf.nn.conv2d`` has no CPU gradient, and slices are both
differentiable and fast. Padding cells hold log-prob 0 (probability 1, empty scope).

Layout is cells-major ``[H, W, B, C]``.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from .scopes import ResolvedProduct


class Product(tf.Module):
    """One GCLP layer built from a resolved (validated) ``ProductSpec``.

    Parameters
    ----------
    resolved : ResolvedProduct
        Geometry from ``scopes.resolve``.
    in_channels : int
    rng : numpy Generator
        Draws the random subset of channel combinations in one-hot mode.
    """

    def __init__(self, resolved: ResolvedProduct, in_channels: int, rng=None, name=None):
        super().__init__(name=name or resolved.spec.name)
        self.resolved = resolved
        self.axes = resolved.axes
        self.out_shape = resolved.out_shape
        self.in_channels = int(in_channels)
        self.offsets = list(itertools.product(*[range(op.kernel) for op in self.axes]))
        n_children = len(self.offsets)
        self.mode = resolved.spec.mode if n_children > 1 else "depthwise"
        self.channel_index = None  # [n_children, C_out] for a one-hot subset
        if self.mode == "depthwise":
            self.out_channels = self.in_channels
        elif self.mode == "one_hot":
            n_all = self.in_channels ** n_children
            cap = resolved.spec.n_channels
            if cap is None or n_all <= cap:
                self.out_channels = n_all  # all combinations, by broadcast add
            else:
                rng = np.random.default_rng(0) if rng is None else rng
                codes = rng.choice(n_all, size=cap, replace=False) if n_all < 2**62 else \
                    rng.integers(0, n_all, size=cap)
                codes = np.sort(codes)
                digits = []
                for _ in range(n_children):  # mixed-radix digits of each combination code
                    digits.append(codes % self.in_channels)
                    codes = codes // self.in_channels
                self.channel_index = tf.constant(np.stack(digits[::-1]).astype(np.int32))
                self.out_channels = int(cap)
        else:
            raise ValueError(f"unknown product mode {self.mode!r}")

    def _children(self, x):
        paddings = [[op.pad_before, op.pad_after] for op in self.axes] + [[0, 0], [0, 0]]
        if any(p != [0, 0] for p in paddings):
            x = tf.pad(x, paddings)  # zeros = log 1: padding cells are constant 1
        children = []
        for offset in self.offsets:
            begin = [op.out_start * op.stride + a * op.dilation
                     for op, a in zip(self.axes, offset)]
            end = [b + (n - 1) * op.stride + 1
                   for b, n, op in zip(begin, self.out_shape, self.axes)]
            strides = [op.stride for op in self.axes]
            children.append(tf.strided_slice(x, begin + [0, 0], end + [0, 0],
                                             strides + [1, 1], end_mask=0b1100))
        return children

    def __call__(self, x):
        """``[H_in, W_in, B, C_in]`` -> ``[H_out, W_out, B, C_out]``."""
        if len(self.offsets) == 1 and self.mode == "depthwise" and not self._pads_or_crops():
            return x  # an identity layer (kernel 1 on every axis)
        if self._backward_kind() is None:
            return self._forward(x)

        @tf.custom_gradient
        def product(x):
            def grad(g):
                return self._backward(g)

            return self._forward(x), grad

        return product(x)

    def _pads_or_crops(self):
        return any(op.pad_before or op.pad_after or op.out_start or op.stride != 1
                   for op in self.axes)

    def _forward(self, x):
        children = self._children(x)
        if len(children) == 1:
            return children[0]
        if self.mode == "depthwise":
            return tf.add_n(children)
        if self.channel_index is not None:
            return tf.add_n([tf.gather(c, self.channel_index[i], axis=-1)
                             for i, c in enumerate(children)])
        # All combinations: broadcast child i along its own channel axis, then flatten.
        n = len(children)
        out = None
        for i, c in enumerate(children):
            shape = [1] * n
            shape[i] = self.in_channels
            term = tf.reshape(c, tf.concat([tf.shape(c)[:3], shape], 0))
            out = term if out is None else out + term
        return tf.reshape(out, tf.concat([tf.shape(out)[:3], [self.out_channels]], 0))

    # ------------------------------------------------------------------ backward
    # Autodiff of strided slices (StridedSliceGrad) writes one zero-filled, padded-size
    # tensor per child and is a slow generic kernel on CPU: it took ~90 % of a hard-EM step
    # (benchmarks/formulations.py: depthwise d=16 forward+backward 1031 ms -> 52 ms with the
    # hand-written transpose below). The transpose of "sum of shifted slices" is a sum of
    # oppositely shifted windows of the incoming gradient (unit strides), or an interleave
    # of the per-offset gradients (non-overlapping layers, stride = kernel).

    def _backward_kind(self):
        if all(op.stride == 1 for op in self.axes):
            return "shift"
        if all(op.stride == op.kernel and op.dilation == 1 for op in self.axes):
            return "interleave"
        return None  # other geometries: TensorFlow's autodiff

    def _channel_grads(self, g):
        """Gradient reaching each child's channels, one ``[H_out, W_out, B, C_in]`` per offset."""
        n = len(self.offsets)
        if self.mode == "depthwise" or n == 1:
            return [g] * n
        if self.channel_index is not None:
            flat = tf.reshape(g, [-1, self.out_channels])
            grads = []
            for i in range(n):
                onehot = tf.one_hot(self.channel_index[i], self.in_channels, dtype=g.dtype)
                grads.append(tf.reshape(tf.matmul(flat, onehot),
                                        tf.concat([tf.shape(g)[:3], [self.in_channels]], 0)))
            return grads
        full = tf.reshape(g, tf.concat([tf.shape(g)[:3], [self.in_channels] * n], 0))
        return [tf.reduce_sum(full, axis=[3 + j for j in range(n) if j != i]) for i in range(n)]

    @staticmethod
    def _window(t, starts, sizes):
        """``t[starts[0]:starts[0]+sizes[0], starts[1]:...]`` with zeros outside ``t``."""
        pads, begins = [], []
        for axis, (start, size) in enumerate(zip(starts, sizes)):
            n = t.shape[axis]
            before, after = max(0, -start), max(0, start + size - n)
            pads.append([before, after])
            begins.append(start + before)
        if any(p != [0, 0] for p in pads):
            t = tf.pad(t, pads + [[0, 0], [0, 0]])
        return t[begins[0]:begins[0] + sizes[0], begins[1]:begins[1] + sizes[1]]

    def _backward(self, g):
        in_shape = self.resolved.in_shape
        grads = self._channel_grads(g)
        if self._backward_kind() == "shift":
            # Input cell i (padded position i + pad_before) receives output o = i + shift_a.
            terms = []
            for offset, g_a in zip(self.offsets, grads):
                shifts = [op.pad_before - op.out_start - a * op.dilation
                          for op, a in zip(self.axes, offset)]
                terms.append(self._window(g_a, shifts, in_shape))
            return tf.add_n(terms)
        # Interleave: padded position o * k + a holds output o's child at offset a.
        kh, kw = (op.kernel for op in self.axes)
        stacked = tf.stack(grads, axis=0)  # [kh * kw, H_out, W_out, B, C]
        shape = tf.shape(stacked)
        stacked = tf.reshape(stacked, tf.concat([[kh, kw], shape[1:]], 0))
        region = tf.transpose(stacked, [2, 0, 3, 1, 4, 5])  # [H_out, kh, W_out, kw, B, C]
        region = tf.reshape(region, tf.concat(
            [[self.out_shape[0] * kh, self.out_shape[1] * kw], shape[3:]], 0))
        starts = [op.pad_before - op.out_start * op.stride for op in self.axes]
        return self._window(region, starts, in_shape)
