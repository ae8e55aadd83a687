"""Triton kernels of the ``hidiff::`` ops for CUDA devices.

Importing this package does not import Triton: :mod:`.registration` only imports it when it
registers the kernels (torch built with CUDA, a GPU present and Triton installed), and
:mod:`.launch` / :mod:`.kernels` import it when they are imported themselves. The kernels follow
the contracts of :mod:`hidiff_kernels.reference` bit for bit (same bit layout, exact integer
counts, the same float32 operations in the same order, no fused multiply-add, the same
Philox4x32-10 counter RNG), so they are tested on CPU tensors with ``TRITON_INTERPRET=1``.

Modules:
    kernels: the ``@triton.jit`` kernels.
    launch: argument checks, allocation and launch of each kernel (torch tensors in and out).
    registration: registers :mod:`.launch` as the CUDA kernels of ops without a compiled one.
"""
