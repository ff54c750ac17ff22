"""The layer list: :class:`.ir.Network`, a piecewise-linear network as dense, convolutional,
pooling, reshaping and activation layers, each with its faces, evaluated exactly in any dtype.
:mod:`.layers` holds what every layer is, :mod:`.affine` and :mod:`.nonlinear` the two kinds,
:mod:`.ir` the network and every layer's name.

May import: :mod:`lrcert.runtime`, :mod:`lrcert.errors`.
"""
