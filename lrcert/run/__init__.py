"""A run: a model and its data through the engine (:mod:`.runner`), with the prediction radius
and adversarial points inside a box of valid inputs (:mod:`.box`). What ``certify`` and ``check``
share.

May import: :mod:`lrcert.engine`, :mod:`lrcert.models`, :mod:`lrcert.data`, :mod:`lrcert.network`,
:mod:`lrcert.runtime`, :mod:`lrcert.errors`.
"""
