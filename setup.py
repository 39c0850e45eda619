"""Builds the optional native kernels (``hemoseg_edge/_native.cpp``, loaded with ctypes).

Everything else is in pyproject.toml. ``optional=True``: without a C++ compiler the package
installs anyway and runs the numpy reference (``hemoseg_edge.native.available()`` is False).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hemoseg_edge._native",
            sources=["hemoseg_edge/_native.cpp"],
            language="c++",
            # bit equality with the numpy/OpenCV references: no fused multiply-add, no fast-math
            extra_compile_args=[
                "-O3",
                "-std=c++17",
                "-ffp-contract=off",
                "-fno-fast-math",
                "-fno-math-errno",
            ],
            optional=True,
        )
    ]
)
