"""Data in: arrays (:mod:`.arrays`: ``.npy``/``.npz``, stdin, sequences of different lengths)
and data where users keep it (:mod:`.sources`: image folders, CSV and Parquet tables, labels and
class names), read as rows of a model's input.

May import: :mod:`lrcert.runtime`, :mod:`lrcert.errors`.
"""
