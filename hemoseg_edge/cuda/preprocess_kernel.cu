// Preprocessing kernel: crop box -> green -> exact area resampling -> /255, clip, NCHW float32.
//
// Mirrors hemoseg_edge/preprocess.py (``area_weights`` / ``area_resample`` / ``preprocess_frame``),
// whose docstring is the specification. One output pixel (j, i) of an H x W tensor is
//
//     out[j, i] = clip((sum_r wy(j, r) * (sum_c wx(i, c) * g[r, c])) * float(1/255), 0, 1)
//
// with g = channel 1 (green) of an interleaved BGR/BGRA uint8 frame (channel 0 of a grey frame)
// and the weight of source index c for the footprint [a, b) = [start + j*s, start + (j+1)*s),
// s = (stop - start) / dst_len:   w = max(0, min(b, c+1) - max(a, c)) / s.
//
// Arithmetic: the footprint bounds a, b are computed in double, exactly as the reference computes
// them in float64 (a few double operations per output pixel, none in the inner loop); they are
// then stored relative to the footprint's first source index, so the per-source weights are
// computed in float without losing precision on large frames. Accumulation is in float, rows
// outer, columns inner. The CPU reference sums in the other order (``(Wy @ g) @ Wx.T``, BLAS), so
// results differ only by float rounding (observed ~1e-7 after /255; the tests allow 1/255).
//
// The same file compiles three ways:
//   * nvcc -fatbin (CMakeLists.txt): the __global__ kernel ``hemoseg_preprocess``;
//   * nvcc via pycuda.compiler.SourceModule(no_extern_c=True) at run time (fallback);
//   * plain C++ (host_build.cpp #includes this file): ``hemoseg_preprocess_host``, the CPU loop
//     over the very same __host__ __device__ functions, used by the tests.

#ifndef HEMOSEG_PREPROCESS_KERNEL_CU
#define HEMOSEG_PREPROCESS_KERNEL_CU

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#define HEMOSEG_HD __host__ __device__ __forceinline__
#define HEMOSEG_RESTRICT __restrict__
#else
// Plain C++ build: the CUDA qualifiers vanish.
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#define HEMOSEG_HD static inline
#define HEMOSEG_RESTRICT __restrict__
#endif

// Bump when the arguments or the arithmetic change (the Python loader checks it).
#define HEMOSEG_PREPROCESS_ABI 1

// Return codes of hemoseg_check_args / hemoseg_preprocess_host.
enum {
    HEMOSEG_OK = 0,
    HEMOSEG_ERR_NULL = 1,      // frame or out pointer is NULL
    HEMOSEG_ERR_FRAME = 2,     // width or height < 1
    HEMOSEG_ERR_CHANNELS = 3,  // channels not 1, 3 or 4
    HEMOSEG_ERR_PITCH = 4,     // pitch < width * channels
    HEMOSEG_ERR_BOX = 5,       // box not finite, empty, or outside the frame
    HEMOSEG_ERR_OUT_SIZE = 6   // out_h or out_w < 1, or out_h * out_w > 2^30
};

// One output index's footprint along one axis.
typedef struct {
    int first;    // first source index under the footprint
    int count;    // number of source indices first .. first+count-1 (weights may be 0 at ends)
    float a;      // footprint start, relative to ``first`` (in [0, 1))
    float b;      // footprint end, relative to ``first``
    float s;      // footprint length (source pixels per output pixel)
} hemoseg_footprint;

// Footprint of output index j when [start, stop) is resampled to dst_len pixels.
// The source indices are clipped to the reference's band [floor(start), ceil(stop)).
HEMOSEG_HD hemoseg_footprint hemoseg_area_footprint(double start, double stop, int dst_len, int j) {
    const double s = (stop - start) / (double)dst_len;
    const double a = start + s * (double)j;
    const double b = a + s;
    int lo = (int)floor(a);
    int hi = (int)ceil(b);
    const int band_lo = (int)floor(start);
    const int band_hi = (int)ceil(stop);
    if (lo < band_lo) lo = band_lo;
    if (hi > band_hi) hi = band_hi;  // b may exceed stop by a rounding error for the last j
    hemoseg_footprint f;
    f.first = lo;
    f.count = hi > lo ? hi - lo : 0;
    f.a = (float)(a - (double)lo);
    f.b = (float)(b - (double)lo);
    f.s = (float)s;
    return f;
}

// Weight of source index f.first + k: max(0, min(b, c+1) - max(a, c)) / s.
HEMOSEG_HD float hemoseg_area_weight(const hemoseg_footprint f, int k) {
    const float lo = fmaxf(f.a, (float)k);
    const float hi = fminf(f.b, (float)(k + 1));
    const float w = hi - lo;
    return w > 0.0f ? w / f.s : 0.0f;
}

// Weighted 2-D sum of the green channel over the footprint fy x fx (no /255).
// ``frame`` points at pixel (0, 0); ``pitch`` is the row stride in bytes; ``channels`` the number
// of interleaved uint8 channels per pixel (green = channel 1 when channels >= 3, else channel 0).
// Summation order: rows outer, columns inner.
HEMOSEG_HD float hemoseg_area_sum(const uint8_t* HEMOSEG_RESTRICT frame, int pitch, int channels,
                                  const hemoseg_footprint fy, const hemoseg_footprint fx) {
    const int green = channels >= 3 ? 1 : 0;
    const uint8_t* base = frame + (size_t)fx.first * (size_t)channels + (size_t)green;
    float acc = 0.0f;
    for (int r = 0; r < fy.count; ++r) {
        const float wy = hemoseg_area_weight(fy, r);
        if (wy == 0.0f) continue;
        const uint8_t* row = base + (size_t)(fy.first + r) * (size_t)pitch;
        float row_acc = 0.0f;
        for (int c = 0; c < fx.count; ++c) {
            row_acc += hemoseg_area_weight(fx, c) * (float)row[(size_t)c * (size_t)channels];
        }
        acc += wy * row_acc;
    }
    return acc;
}

// Argument check shared by the host entry point, the kernel and (mirrored) the Python wrappers.
HEMOSEG_HD int hemoseg_check_args(int width, int height, int pitch, int channels, float x0,
                                  float y0, float x1, float y1, int out_h, int out_w) {
    if (width < 1 || height < 1) return HEMOSEG_ERR_FRAME;
    if (channels != 1 && channels != 3 && channels != 4) return HEMOSEG_ERR_CHANNELS;
    if ((long long)pitch < (long long)width * (long long)channels) return HEMOSEG_ERR_PITCH;
    // Written so that NaN fails every comparison (and +-inf fails the bounds).
    if (!(x0 >= 0.0f) || !(y0 >= 0.0f)) return HEMOSEG_ERR_BOX;
    if (!(x1 <= (float)width) || !(y1 <= (float)height)) return HEMOSEG_ERR_BOX;
    if (!(x1 > x0) || !(y1 > y0)) return HEMOSEG_ERR_BOX;
    if (out_h < 1 || out_w < 1) return HEMOSEG_ERR_OUT_SIZE;
    if ((long long)out_h * (long long)out_w > (1LL << 30)) return HEMOSEG_ERR_OUT_SIZE;
    return HEMOSEG_OK;
}

// Output pixel (j, i), normalised as the reference does: multiply by float(1/255), then clip to
// [0, 1] (float rounding can give 1.0000001 for an all-255 footprint).
HEMOSEG_HD float hemoseg_preprocess_pixel(const uint8_t* HEMOSEG_RESTRICT frame, int pitch,
                                          int channels, float x0, float y0, float x1, float y1,
                                          int out_h, int out_w, int j, int i) {
    const hemoseg_footprint fy = hemoseg_area_footprint((double)y0, (double)y1, out_h, j);
    const hemoseg_footprint fx = hemoseg_area_footprint((double)x0, (double)x1, out_w, i);
    const float v = hemoseg_area_sum(frame, pitch, channels, fy, fx) * (1.0f / 255.0f);
    return fminf(fmaxf(v, 0.0f), 1.0f);
}

#ifdef __CUDACC__
// One thread per output pixel; writes out[j * out_w + i] of a (1, 1, out_h, out_w) float32
// tensor (e.g. the TensorRT input binding). ``frame`` is a device pointer. Invalid arguments
// write nothing: callers validate first (hemoseg_edge/cuda/gpu.py does).
extern "C" __global__ void hemoseg_preprocess(const uint8_t* __restrict__ frame, int width,
                                              int height, int pitch, int channels, float x0,
                                              float y0, float x1, float y1, int out_h, int out_w,
                                              float* __restrict__ out) {
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    const int j = (int)(blockIdx.y * blockDim.y + threadIdx.y);
    if (i >= out_w || j >= out_h) return;
    if (hemoseg_check_args(width, height, pitch, channels, x0, y0, x1, y1, out_h, out_w) !=
        HEMOSEG_OK)
        return;
    out[(size_t)j * (size_t)out_w + (size_t)i] =
        hemoseg_preprocess_pixel(frame, pitch, channels, x0, y0, x1, y1, out_h, out_w, j, i);
}
#endif  // __CUDACC__

// CPU entry point: the same arithmetic as the kernel, one output pixel at a time.
// ``out`` receives out_h * out_w floats (row-major). Returns HEMOSEG_OK or an HEMOSEG_ERR_* code.
extern "C" int hemoseg_preprocess_host(const uint8_t* frame, int width, int height, int pitch,
                                       int channels, float x0, float y0, float x1, float y1,
                                       int out_h, int out_w, float* out) {
    if (frame == NULL || out == NULL) return HEMOSEG_ERR_NULL;
    const int rc = hemoseg_check_args(width, height, pitch, channels, x0, y0, x1, y1, out_h, out_w);
    if (rc != HEMOSEG_OK) return rc;
    for (int j = 0; j < out_h; ++j) {
        for (int i = 0; i < out_w; ++i) {
            out[(size_t)j * (size_t)out_w + (size_t)i] =
                hemoseg_preprocess_pixel(frame, pitch, channels, x0, y0, x1, y1, out_h, out_w, j, i);
        }
    }
    return HEMOSEG_OK;
}

extern "C" int hemoseg_preprocess_abi_version(void) { return HEMOSEG_PREPROCESS_ABI; }

#endif  // HEMOSEG_PREPROCESS_KERNEL_CU
