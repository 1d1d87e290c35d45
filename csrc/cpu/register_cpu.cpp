#include "rnn/register_ops.h"

TORCH_LIBRARY_IMPL(seqops, CPU, m) { seqops::register_recurrent_ops(m); }
