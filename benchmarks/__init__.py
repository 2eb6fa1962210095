"""Benchmark scripts that reproduce the published tables (RESULTS.md); results live in benchmarks/results/.

Run each from the repository root as a module, e.g. ``python -m benchmarks.table1`` or
``python -m benchmarks.make_tables``, so that ``benchmarks`` is importable without path manipulation.
"""
