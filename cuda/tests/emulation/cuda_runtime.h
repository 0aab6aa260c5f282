// Test-only shim: the host emulation of the CUDA built-ins (see cuda_host_builtins.h).
#pragma once
#include "cuda_host_builtins.h"
