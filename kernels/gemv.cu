// Matrix-vector products for a few rows (decode steps of small batches), at the rate the weight
// can be read: y[m, n] = sum_k x[m, k] * w[n, k] for x [rows, k] and a weight w [n, k] (the
// layout of a linear layer's weight), rows <= 8. One warp per output column n: its lanes read
// the weight's row n in 16-byte pieces (each read once for every row of x), accumulate in f32
// and reduce across the warp; the result is rounded once. src/models/layers/gemv.rs launches it
// where it applies (k a multiple of the piece, 16-byte aligned rows), cuBLAS elsewhere.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "convert.cuh"

#define MAX_ROWS 8
#define WARPS_PER_BLOCK 8

template <typename T> struct Piece;
// 16 bytes: 8 half-precision values or 4 floats.
template <> struct Piece<__nv_bfloat16> { static constexpr int N = 8; };
template <> struct Piece<__half> { static constexpr int N = 8; };
template <> struct Piece<float> { static constexpr int N = 4; };

template <typename T>
__device__ void gemv(const T *__restrict__ x, const T *__restrict__ w, T *__restrict__ y,
                     int rows, int k, int n) {
    constexpr int P = Piece<T>::N;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int col = blockIdx.x * WARPS_PER_BLOCK + warp;
    if (col >= n) return;
    const int pieces = k / P;
    const float4 *w_row = reinterpret_cast<const float4 *>(w + (size_t)col * k);
    float acc[MAX_ROWS];
#pragma unroll
    for (int r = 0; r < MAX_ROWS; r++) acc[r] = 0.0f;
#pragma unroll 4
    for (int p = lane; p < pieces; p += 32) {
        const float4 wv = __ldg(w_row + p);
        const T *wp = reinterpret_cast<const T *>(&wv);
#pragma unroll
        for (int r = 0; r < MAX_ROWS; r++) {
            if (r < rows) {
                const float4 xv = __ldg(reinterpret_cast<const float4 *>(x + (size_t)r * k) + p);
                const T *xp = reinterpret_cast<const T *>(&xv);
#pragma unroll
                for (int i = 0; i < P; i++) acc[r] += to_float(xp[i]) * to_float(wp[i]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < MAX_ROWS; r++) {
        if (r < rows) {
            float sum = acc[r];
#pragma unroll
            for (int mask = 16; mask > 0; mask >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, mask);
            if (lane == 0) y[(size_t)r * n + col] = from_float<T>(sum);
        }
    }
}

#define GEMV(T, NAME)                                                                        \
    extern "C" __global__ void gemv_##NAME(const T *x, const T *w, T *y, int rows, int k,     \
                                           int n) {                                         \
        gemv<T>(x, w, y, rows, k, n);                                                        \
    }

GEMV(float, f32)
GEMV(__half, f16)
GEMV(__nv_bfloat16, bf16)
