# The package is described in pyproject.toml; this file only adds the cffi
# extension (the indirect table walk in C), which pyproject cannot declare.
from setuptools import setup

setup(cffi_modules=["pyvirtiofsd/device/_tablewalk_build.py:ffibuilder"])
