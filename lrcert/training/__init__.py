"""Training for larger regions: the ROLL regulariser (:mod:`.roll`) and ``lrcert train``'s
networks, data and loop (:mod:`.train`).

May import: :mod:`lrcert.engine`, :mod:`lrcert.models`, :mod:`lrcert.data`, :mod:`lrcert.network`,
:mod:`lrcert.runtime`, :mod:`lrcert.errors`.
"""
