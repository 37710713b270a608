"""The package's native parts, both optional: the search's kernels (neimsctl/io/_native.c) and
the student stack's one-row bfloat16 products (neimsctl/nn/_rowgemm.c).

Where they cannot be compiled (no C compiler), the package installs without them and computes
the same results in numpy (neimsctl.io.native says which is in use) and torch
(neimsctl.nn.rowgemm).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("neimsctl.io._native", ["neimsctl/io/_native.c"], optional=True,
                  extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra"]),
        Extension("neimsctl.nn._rowgemm", ["neimsctl/nn/_rowgemm.c"], optional=True,
                  extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra"]),
    ],
)
