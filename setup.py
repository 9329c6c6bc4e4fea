"""Package discovery only (metadata lives in pyproject.toml): every folder under plugins/ is a
subpackage of rtk_plugins, so adding a method needs a folder and an entry point, nothing here."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["rtk", "rtk.*"]), "rtk_plugins",
                *(f"rtk_plugins.{name}" for name in find_packages("plugins"))])
