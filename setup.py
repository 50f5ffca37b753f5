"""Package discovery: ``fast3d_cli`` at the top, ``fast3d_kernels`` inside the ``kernels/`` folder.

``kernels/`` has no ``__init__.py`` on purpose: a regular package there would hide the unrelated PyPI
``kernels`` package (a dependency of transformers >= 5.25) for anyone running from the checkout's root.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["fast3d_cli*"]) + find_packages(where="kernels"))
