"""Evaluation: datasets, resumable runs, metrics, sweeps and plots.

Must NOT know: strategy internals; it reads Result rows.
"""
