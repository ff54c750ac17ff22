"""Results and what renders them: records, tables, JSON and CSV (:mod:`.report`), the HTML page
(:mod:`.html_report`), result files read back (:mod:`.runs`) and compared (:mod:`.compare`), the
regions drawn in a plane or walked along a segment (:mod:`.plot`, :mod:`.regions`), and
``lrcert stability``'s table, JSON and CSV (:mod:`.stability`) and its page (:mod:`.stability_page`).

May import: :mod:`lrcert.engine`, :mod:`lrcert.data`, :mod:`lrcert.network`, :mod:`lrcert.runtime`,
:mod:`lrcert.errors`.
"""
