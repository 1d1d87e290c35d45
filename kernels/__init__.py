"""Triton kernels of seqops (installed as seqops.kernels): @triton.jit kernels and their launch helpers only."""
