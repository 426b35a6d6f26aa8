"""Benchmarks: each prints JSON and compares with DCMTK on the same data (see the README)."""
