# setuptools reads metadata from pyproject.toml; this file only exists because cffi's API-mode
# build hook (cffi_modules) is not expressible in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["csrc/build_core.py:ffibuilder"])
