"""Where lrcert computes: the device and its memory (:mod:`.devices`), the CPU threads that follow
the machine's load (:mod:`.threads`), and torchrun's ranks (:mod:`.ranks`).

May import: :mod:`lrcert.errors` only. Everything else may import it.
"""
