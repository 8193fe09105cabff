"""The optional compiled hot path (walbridge._accel); everything else is in pyproject.toml.

``optional=True``: where no C compiler is available the build goes on without it and walbridge runs on
its pure-Python path (``walbridge --version`` says which one is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "walbridge._accel",
            sources=["src/walbridge/_accel.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
