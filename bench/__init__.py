"""Benchmarks: one module per benchmark, each with ``main(argv)``; they write JSON + a markdown table.

Run one as ``studio bench NAME [ARGS]`` (installed or from a checkout), ``python -m bench.NAME`` or
``python bench/NAME.py``. Never run in CI.
"""
