"""The compiled kernels of dcm.runtime.cpu, one C module each: _native.c (sparse products, the
convolutions, pooling), _pointwise.c (activations, LayerNorm, Softmax), _recurrent.c (the
LSTM/GRU/RNN step loop), _upsample.c (Resize, ConvTranspose's col2im), _layout.c (Transpose) and
_pool.c (the native thread pool the others split their work on), all including _kernel_common.h;
and _arena.c, numpy's allocator while a session runs, built against numpy's C API (numpy is in the
build requirements; without it the module is left out). Everything else is in pyproject.toml.

optional=True: without a C compiler the install still succeeds and the runtime falls back to
scipy's kernels (slower at batch 1); tests/runtime/test_native.py fails loudly in that case unless
DCM_ALLOW_NO_NATIVE=1 says it is expected.
"""
import sys

from setuptools import Extension, setup

MODULES = ("_native", "_pointwise", "_recurrent", "_upsample", "_pool", "_gemm", "_pointconv", "_layout", "_nhwc")


def flags(name: str) -> list[str]:
    """-O3 for every module; _pool (the native thread pool) also needs pthreads."""
    if sys.platform == "win32":
        return []
    return ["-O3", "-pthread"] if name == "_pool" else ["-O3"]


def numpy_modules() -> list[Extension]:
    """_arena.c, which needs numpy's headers: none where numpy cannot be imported at build time."""
    try:
        import numpy
    except ImportError:
        return []
    return [Extension("dcm.runtime.cpu._arena", ["dcm/runtime/cpu/_arena.c"], optional=True,
                      include_dirs=[numpy.get_include()], extra_compile_args=flags("_arena"))]


setup(ext_modules=[Extension(f"dcm.runtime.cpu.{name}", [f"dcm/runtime/cpu/{name}.c"], optional=True,
                             depends=["dcm/runtime/cpu/_kernel_common.h", "dcm/runtime/cpu/_operand.h",
                                      "dcm/runtime/cpu/_packed_gemm.h", "dcm/runtime/cpu/_window.h", "dcm/runtime/cpu/_depthwise_vec.h",
                                      "dcm/runtime/cpu/_conv_out_vec.h", "dcm/runtime/cpu/_vec_undef.h",
                                      "dcm/runtime/cpu/_wino4_vec.h"],
                             extra_compile_args=flags(name),
                             extra_link_args=flags(name)[1:])
                   for name in MODULES] + numpy_modules())
