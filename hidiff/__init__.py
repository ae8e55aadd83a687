"""HiDiff: a segmentor refined by a binarised Bernoulli diffusion model, on the hidiff_kernels ops."""

__version__ = "0.1.0"
