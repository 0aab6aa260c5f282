// The CUDA value_update kernels compiled for the host (test-only, see cuda_host_emulation.h).
#include "gpu/value_update.cu"
