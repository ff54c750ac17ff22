"""The layer list: :class:`.ir.Network`, a piecewise-linear network as dense, convolutional,
pooling, reshaping and activation layers, each with its faces, evaluated exactly in any dtype.

May import: :mod:`lrcert.runtime`, :mod:`lrcert.errors`.
"""
