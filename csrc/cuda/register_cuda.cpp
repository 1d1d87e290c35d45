// Compiled only in CUDA builds (setup.py). Same op functions as the CPU; ATen's GEMMs run on the current
// stream, and the pointwise launchers (rnn_pointwise.cu) take it from at::cuda::getCurrentCUDAStream().
#include "rnn/register_ops.h"

TORCH_LIBRARY_IMPL(seqops, CUDA, m) { seqops::register_recurrent_ops(m); }
