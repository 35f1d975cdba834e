// Fused kernels of a Llama-family layer (src/models/layers/fused.rs launches them): each one
// replaces two to seven of candle's and computes what they compute, rounding where they round.
//
// - add_rms_norm: `sum = x + delta` (the residual add) and `rms_norm(sum) * weight` in one pass
//   over the row; writes both (`out[0]` the sum, `out[1]` the normed row).
// - silu_mul: `silu(gate) * up` from the fused gate/up projection's output (`[rows, 2 * inter]`,
//   gate first).
// - rope_split: splits the fused q/k/v projection's output (`[rows, (heads + 2 * kv_heads) *
//   head_dim]`) into contiguous q, k, v (`[rows, heads, d]`, `[rows, kv_heads, d]` twice, one
//   after another in `out`), applying the rotary embedding (rotate-half form, `cos`/`sin`
//   `[rows, d / 2]`) to q and k on the way.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "convert.cuh"


__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int mask = 16; mask > 0; mask >>= 1) x += __shfl_xor_sync(0xffffffff, x, mask, 32);
    return x;
}

// One block of `block_size` threads (32 or 1024, as candle's rmsnorm) per row.
template <typename T>
__device__ void add_rms_norm(const T *x, const T *delta, const T *weight, T *out, int rows,
                             int cols, int block_size, float eps) {
    const int row = blockIdx.x;
    const int tid = threadIdx.x;
    const size_t base = (size_t)row * cols;
    T *sum_out = out + base;
    T *norm_out = out + (size_t)rows * cols + base;
    float partial = 0.0f;
    for (int col = tid; col < cols; col += block_size) {
        // Rounded to T as the separate add rounds it; the norm reads the rounded sum.
        const T s = from_float<T>(to_float(x[base + col]) + to_float(delta[base + col]));
        sum_out[col] = s;
        const float f = to_float(s);
        partial += f * f;
    }
    partial = warp_sum(partial);
    if (block_size > 32) {
        __shared__ float per_warp[32];
        const int warp = tid / 32, lane = tid % 32;
        if (lane == 0) per_warp[warp] = partial;
        __syncthreads();
        partial = warp_sum(per_warp[lane]);
    }
    const float scale = rsqrtf(partial / cols + eps);
    // Each thread reads back only the sums it wrote itself: no barrier needed.
    for (int col = tid; col < cols; col += block_size) {
        norm_out[col] = from_float<T>(scale * to_float(sum_out[col]) * to_float(weight[col]));
    }
}

template <typename T>
__device__ void silu_mul(const T *gate_up, T *out, int rows, int inter) {
    const size_t total = (size_t)rows * inter;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)blockDim.x * gridDim.x) {
        const size_t row = i / inter, col = i - row * inter;
        const float g = to_float(gate_up[row * 2 * inter + col]);
        const float u = to_float(gate_up[row * 2 * inter + inter + col]);
        // silu rounded to T, then the product rounded: as the two separate ops round.
        const float s = to_float(from_float<T>(g / (1.0f + expf(-g))));
        out[i] = from_float<T>(s * u);
    }
}

// One thread per pair of rotated elements (q and k heads), or per two copied ones (v).
template <typename T>
__device__ void rope_split(const T *qkv, const T *cos, const T *sin, T *out, int rows,
                           int heads, int kv_heads, int head_dim) {
    const int half_dim = head_dim / 2;
    const int all_heads = heads + 2 * kv_heads;
    const size_t total = (size_t)rows * all_heads * half_dim;
    const size_t q_size = (size_t)rows * heads * head_dim;
    const size_t k_size = (size_t)rows * kv_heads * head_dim;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (size_t)blockDim.x * gridDim.x) {
        const int j = (int)(i % half_dim);
        const size_t row_head = i / half_dim;
        const int head = (int)(row_head % all_heads);
        const size_t row = row_head / all_heads;
        const T *src = qkv + (row * all_heads + head) * head_dim;
        const T a = src[j], b = src[j + half_dim];
        T *dst;
        if (head < heads) {
            dst = out + (row * heads + head) * head_dim;
        } else if (head < heads + kv_heads) {
            dst = out + q_size + (row * kv_heads + (head - heads)) * head_dim;
        } else {
            dst = out + q_size + k_size + (row * kv_heads + (head - heads - kv_heads)) * head_dim;
            dst[j] = a;
            dst[j + half_dim] = b;
            continue;
        }
        const T c = cos[row * half_dim + j], s = sin[row * half_dim + j];
        // As candle's rope kernel computes it, in T.
        dst[j] = a * c - b * s;
        dst[j + half_dim] = a * s + b * c;
    }
}

#define FUSED_OPS(T, NAME)                                                                      \
    extern "C" __global__ void add_rms_norm_##NAME(const T *x, const T *delta, const T *weight, \
                                                   T *out, int rows, int cols, int block_size,  \
                                                   float eps) {                                 \
        add_rms_norm<T>(x, delta, weight, out, rows, cols, block_size, eps);                    \
    }                                                                                           \
    extern "C" __global__ void silu_mul_##NAME(const T *gate_up, T *out, int rows, int inter) { \
        silu_mul<T>(gate_up, out, rows, inter);                                                 \
    }                                                                                           \
    extern "C" __global__ void rope_split_##NAME(const T *qkv, const T *cos, const T *sin,      \
                                                 T *out, int rows, int heads, int kv_heads,     \
                                                 int head_dim) {                                \
        rope_split<T>(qkv, cos, sin, out, rows, heads, kv_heads, head_dim);                     \
    }

FUSED_OPS(float, f32)
FUSED_OPS(__half, f16)
FUSED_OPS(__nv_bfloat16, bf16)
