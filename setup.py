# The metadata is in pyproject.toml (PEP 621); this file stays for tools that still look for it.
from setuptools import setup

setup()
