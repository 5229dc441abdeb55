# setuptools reads metadata from pyproject.toml; this file only exists because cffi's API-mode
# build hook (cffi_modules) is not expressible in pyproject.toml. One compiled module per layer
# (csrc/build_core.py): bms._core, hil._wire, hil.emulator._plant.
from setuptools import setup

setup(cffi_modules=[
    "csrc/build_core.py:core_ffibuilder",
    "csrc/build_core.py:wire_ffibuilder",
    "csrc/build_core.py:plant_ffibuilder",
])
