"""Testing tools that ship with lamina: the random-program checker.

    python -m lamina.testing.fuzz --n 500 --seed 0

builds programs over the public API from the op registry's input domains (``generate``), runs
each on every available backend against the reference interpreter evaluated in float64 with
error bounds (``oracle``, ``check``), and shrinks a failure to a standalone repro
(``minimize``).
"""
