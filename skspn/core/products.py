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
            begin = [op.out_start * op.stride + a * op.dilation for op, a in zip(self.axes, offset)]
            end = [b + (n - 1) * op.stride + 1 for b, n, op in zip(begin, self.out_shape, self.axes)]
            strides = [op.stride for op in self.axes]
            children.append(tf.strided_slice(x, begin + [0, 0], end + [0, 0],
                                             strides + [1, 1], end_mask=0b1100))
        return children

    def __call__(self, x):
        """``[H_in, W_in, B, C_in]`` -> ``[H_out, W_out, B, C_out]``."""
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
