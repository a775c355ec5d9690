"""End-to-end benchmarking of the detector: ``diffdet bench`` and ``benchmarks/bench_e2e.py``.

Modules: :mod:`settings` (what the grid measures), :mod:`timing` (CUDA events or perf_counter),
:mod:`pipeline` (the timed detection calls and their per-component breakdown), :mod:`grid` (the
num_boxes x steps grid beside the reference backend), :mod:`report` (table, JSON, plots),
:mod:`plot` (Pillow line charts), :mod:`cli` (the command).
"""
