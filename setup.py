"""The compiled kernels (dcm/runtime/cpu/_native.c, _pointwise.c for activations, LayerNorm and Softmax, _recurrent.c for the LSTM/GRU/RNN step loop). Everything else is in pyproject.toml.

optional=True: without a C compiler the install still succeeds and the runtime falls back to
scipy's kernels (slower at batch 1); tests/runtime/test_native.py fails loudly in that case unless
DCM_ALLOW_NO_NATIVE=1 says it is expected.
"""
import sys

from setuptools import Extension, setup

setup(ext_modules=[Extension("dcm.runtime.cpu._native", ["dcm/runtime/cpu/_native.c"], optional=True,
                             depends=["dcm/runtime/cpu/_kernel_common.h"],
                             extra_compile_args=[] if sys.platform == "win32" else ["-O3"]),
                   Extension("dcm.runtime.cpu._pointwise", ["dcm/runtime/cpu/_pointwise.c"], optional=True,
                             depends=["dcm/runtime/cpu/_kernel_common.h"],
                             extra_compile_args=[] if sys.platform == "win32" else ["-O3"]),
                   Extension("dcm.runtime.cpu._recurrent", ["dcm/runtime/cpu/_recurrent.c"], optional=True,
                             depends=["dcm/runtime/cpu/_kernel_common.h"],
                             extra_compile_args=[] if sys.platform == "win32" else ["-O3"]),
                   Extension("dcm.runtime.cpu._upsample", ["dcm/runtime/cpu/_upsample.c"], optional=True,
                             depends=["dcm/runtime/cpu/_kernel_common.h"],
                             extra_compile_args=[] if sys.platform == "win32" else ["-O3"])])
