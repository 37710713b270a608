"""The one native part of the package: the search's kernels (neimsctl/io/_native.c).

Optional: where it cannot be compiled (no C compiler), the package installs without it and
computes the same results in numpy (neimsctl.io.native says which is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("neimsctl.io._native", ["neimsctl/io/_native.c"], optional=True,
                  extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra"]),
    ],
)
