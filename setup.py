"""Package layout (the metadata is in pyproject.toml).

Every package under ``mfspark/`` is found automatically. The repository's ``conf/`` directory
(the shipped configs, ``conf/local.toml`` the default) is installed as the package
``mfspark.conf``, so an installed mfspark reads its default config from inside the package while
the repository keeps a single copy of it. ``pyproject.toml`` alone cannot list found packages
together with one mapped from another directory, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mfspark", "mfspark.*"]), "mfspark.conf"],
    package_dir={"mfspark.conf": "conf"},
    package_data={"mfspark.conf": ["*.toml"]},
)
