// Host (CPU) build of the CUDA preprocessing kernel source: compiled by the C++ compiler, so the
// __host__ __device__ arithmetic in preprocess_kernel.cu is tested without a GPU or nvcc.
// Exports hemoseg_preprocess_host and hemoseg_preprocess_abi_version (see CMakeLists.txt).
#include "preprocess_kernel.cu"
