"""Randomness keyed by (seed, sample index, element): independent of how a batch is split.

Training draws random numbers per sample (dropout masks, random tie-breaking in hard
routing). Drawn with ``tf.random.stateless_uniform(shape, seed)`` they depend on the
batch's shape, so the same global batch split over replicas (``tf.distribute``) would see
other draws than on one device. Here every number is a hash of the seed, the sample's
index in the global batch and the element's position within the sample, so a sample gets
the same draws whichever shard it lands in, and data-parallel training reproduces
single-device training.

The hash is a 32-bit integer mixer (xor-shift / multiply rounds) evaluated in int64 with
every multiplier below 2**31, so no product overflows.
"""

from __future__ import annotations

import operator

import tensorflow as tf

_MASK = 0xFFFFFFFF
_GOLDEN = 0x61C88647  # 2**32 / golden ratio (mod 2**32), below 2**31


#: The three bitwise operations of ``_mix``: on tensors, and on Python ints (a constant
#: salt is mixed at trace time, without graph ops).
_TENSOR_OPS = (tf.bitwise.bitwise_and, tf.bitwise.bitwise_xor, tf.bitwise.right_shift)
_INT_OPS = (operator.and_, operator.xor, operator.rshift)


def _mix(h, ops=_TENSOR_OPS):
    """One avalanche pass over 32-bit values held in int64 (result in [0, 2**32))."""
    and_, xor, right_shift = ops
    h = and_(h, _MASK)
    h = xor(h, right_shift(h, 16))
    h = and_(h * 0x7FEB352D, _MASK)
    h = xor(h, right_shift(h, 15))
    h = and_(h * 0x21F0AAAD, _MASK)
    return xor(h, right_shift(h, 16))


def _combine(key, value):
    """Hash of a key and an index: int64 tensors that broadcast, or a Python int index."""
    ops = _INT_OPS if isinstance(value, int) else _TENSOR_OPS
    return _mix(tf.bitwise.bitwise_xor(key, _mix(value * _GOLDEN + 0x2545F491, ops)))


def fold_in(keys, salt):
    """Keys ``[B]`` of an independent stream ``salt`` (a Python int) derived from ``keys``.

    Hashing the seed into per-sample keys takes about a hundred graph ops; a network
    derives the keys of each layer from one such set with a single mix instead, which
    keeps tracing cheap (each op costs graph-building time on every new network).
    """
    return _combine(keys, int(salt))


def sample_keys(seed, sample_index):
    """Per-sample 32-bit keys ``[B]`` from a seed ``[2]`` and global sample indices ``[B]``."""
    seed = tf.cast(seed, tf.int64)
    s0 = _mix(tf.bitwise.bitwise_and(seed[0], _MASK))
    s1 = _mix(tf.bitwise.bitwise_and(tf.bitwise.right_shift(seed[0], 32), _MASK) + 1)
    s2 = _mix(tf.bitwise.bitwise_and(seed[1], _MASK) + 2)
    s3 = _mix(tf.bitwise.bitwise_and(tf.bitwise.right_shift(seed[1], 32), _MASK) + 3)
    key = _combine(_combine(_combine(s0, s1), s2), s3)
    return _combine(key, tf.cast(sample_index, tf.int64))


def bits(keys, shape, sample_axis):
    """Random 32-bit integers (int64) of ``shape`` with samples along ``sample_axis``.

    ``keys`` ``[B]`` come from ``sample_keys``; element ``e`` of sample ``b`` gets
    ``hash(keys[b], position of e among the other axes)``.
    """
    shape = tf.cast(shape, tf.int64)
    rank = shape.shape[0]
    other = tf.concat([shape[:sample_axis], shape[sample_axis + 1:]], 0)
    position = tf.reshape(tf.range(tf.reduce_prod(other), dtype=tf.int64), other)
    position = tf.expand_dims(position, sample_axis)
    key_shape = [1] * rank
    key_shape[sample_axis] = -1
    return _combine(tf.reshape(keys, key_shape), position)


def uniform(keys, shape, sample_axis):
    """Uniform float32 in the open interval (0, 1) of ``shape`` (23 random bits each).

    ``(raw + 0.5) / 2**k`` is exact in float32 only while ``raw + 0.5`` is, i.e. below
    2**23: with 24 bits the largest draw rounded to 1.0 (once in 2**24 draws), whose
    ``ndtri`` is +inf, so a Normal leaf sampled an infinite pixel. With 23 bits every value
    is exact, from 2**-24 to 1 - 2**-24.
    """
    raw = tf.bitwise.right_shift(bits(keys, shape, sample_axis), 9)
    return (tf.cast(raw, tf.float32) + 0.5) * (1.0 / (1 << 23))
