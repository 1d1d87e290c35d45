"""Pure-PyTorch versions of every seqops op: the oracles of the tests and the baselines of the benchmarks.

Every function takes ``upcast=False``; with ``upcast=True`` low-precision inputs are computed in float32
(float64 stays float64) and the result is cast back, which is the fp32 reference of the FlashAttention
error rule.
"""

from seqops.reference.attention import *  # noqa: F401,F403
from seqops.reference.attention_varlen import *  # noqa: F401,F403
from seqops.reference.rnn import *  # noqa: F401,F403
