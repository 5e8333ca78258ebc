"""Triton kernels for the decisions a plan takes, each with a PyTorch reference, one module per
kernel family. Triton reads TRITON_INTERPRET when a kernel is defined: set it before importing
these modules to run them on the CPU (slowly: for correctness tests, not for timing)."""
