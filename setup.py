"""Package discovery: ``kernels/`` ships under the import name ``fast3d_kernels``.

The folder is named ``kernels`` in the tree, but installing it as ``kernels`` would clash with the
unrelated ``kernels`` distribution on PyPI, so it is mapped (``package-dir`` in pyproject.toml).
"""

from setuptools import find_packages, setup

kernel_packages = ["fast3d_kernels" + name[len("kernels") :] for name in find_packages(include=["kernels*"])]
setup(packages=find_packages(include=["fast3d_cli*"]) + kernel_packages)
