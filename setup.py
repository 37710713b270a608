"""The one native part of the package: the search's bfloat16 kernels (neimsctl/io/_bf16.c).

Optional: where it cannot be compiled (no C compiler), the package installs without it and
computes the same results in numpy (neimsctl.io.bf16_native says which is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("neimsctl.io._bf16", ["neimsctl/io/_bf16.c"], optional=True,
                  extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra"]),
    ],
)
