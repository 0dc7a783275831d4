"""The gconnect CONNECT benchmark: ``python -m bench.harness`` (see bench/README.rst).

Benchmarks are not tests: nothing under tests/ imports this package.
"""
