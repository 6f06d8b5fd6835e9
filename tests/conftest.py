"""Suite-wide settings."""

import moil  # noqa: F401  (first: it sets MKL_CBWR before MKL's first call)
import torch

# The test models are tiny: with several intra-op threads the OpenMP hand-off costs
# more than the arithmetic (≈2 ms vs 7 µs for one small linear on the 2-core CI box).
torch.set_num_threads(1)
