// The CUDA entropy kernels compiled for the host (test-only, see cuda_host_emulation.h).
#include "gpu/entropy.cu"
