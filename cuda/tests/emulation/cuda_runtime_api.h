// Test-only shim: the CUDA runtime types of the host emulation (see cuda_host_emulation.h).
#pragma once
#include "cuda_host_emulation.h"
