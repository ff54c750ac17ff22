"""CI checks: a project's config (:mod:`.config`), its checks run and judged (:mod:`.checks`: radius
floors, baselines, gradient-stability ceilings), JUnit XML (:mod:`.junit`), and the floors, drops and
guarantees they are written in (:mod:`.limits`).

May import: :mod:`lrcert.run`, :mod:`lrcert.results`, :mod:`lrcert.stability`, :mod:`lrcert.models`,
:mod:`lrcert.data`, :mod:`lrcert.engine` and below.
"""
