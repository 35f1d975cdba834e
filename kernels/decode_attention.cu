// Attention of every decode of a pass over its own cached keys and values, read in place from
// the engine's KV slab through a slot table (no gather, no padding read, no mask), in two
// kernels, flash-decoding style:
//
//   decode_attention_partial_<T>_d<head_dim>: grid (seqs * kv_heads, parts), 128 threads. Each
//     block takes one sequence, one kv head (its `group` query heads together) and one part of the
//     context (`part_len` keys); its four warps share the keys, four at a time with their loads in
//     flight together, each lane holding head_dim / 32 values of a row. Scores, the running maximum and sum, and the weighted values stay in f32 (online
//     softmax); the block writes its part's unnormalised output, maximum and sum.
//   decode_attention_combine_<T>: grid (seqs * heads), head_dim threads: the parts' outputs
//     rescaled to one maximum and divided by the sum, rounded once to T.
//
// Layouts: q [seqs, heads, head_dim]; k, v [kv_heads, slots, head_dim]; table [seqs, table_len]
// u32 (slot of each position); lens [seqs] u32 (positions seen, the new token's included);
// out [seqs, heads, head_dim]. A query at position len - 1 with a window w sees positions
// len - w .. len - 1. head_dim is 32, 64, 128 or 256; group (heads / kv_heads) at most 8.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "convert.cuh"

#define WARPS 4
#define MAX_GROUP 8
#define UNROLL 4
#define MAX_HEAD_DIM 256

template <typename T, int PER_LANE>
__device__ void partial(const T *q, const T *k, const T *v, const uint32_t *table,
                        const uint32_t *lens, float *part_out, float *part_max_sum, int heads,
                        int kv_heads, int head_dim, int slots, int table_len, int part_len,
                        int window, float scale) {
  const int parts = gridDim.y;
  const int part = blockIdx.y;
  const int seq = blockIdx.x / kv_heads;
  const int kv_head = blockIdx.x % kv_heads;
  const int group = heads / kv_heads;
  const int per_lane = PER_LANE;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int len = (int)lens[seq];
  const int first = (window > 0 && len > window) ? len - window : 0;
  const int lo = max(first, part * part_len);
  const int hi = min(len, (part + 1) * part_len);

  float qf[MAX_GROUP][PER_LANE];
  float acc[MAX_GROUP][PER_LANE];
  float run_max[MAX_GROUP];
  float run_sum[MAX_GROUP];
#pragma unroll
  for (int g = 0; g < MAX_GROUP; ++g) {
    run_max[g] = -INFINITY;
    run_sum[g] = 0.f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      acc[g][i] = 0.f;
      qf[g][i] = 0.f;
      if (g < group) {
        const size_t at = ((size_t)seq * heads + kv_head * group + g) * head_dim + lane * PER_LANE + i;
        qf[g][i] = to_float(q[at]) * scale;
      }
    }
  }
  const T *k_head = k + (size_t)kv_head * slots * head_dim + lane * PER_LANE;
  const T *v_head = v + (size_t)kv_head * slots * head_dim + lane * PER_LANE;
  // UNROLL keys a warp at a time, their loads in flight together.
  for (int base = lo + warp * UNROLL; base < hi; base += WARPS * UNROLL) {
    size_t row[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      row[u] = base + u < hi ? (size_t)table[(size_t)seq * table_len + base + u] * head_dim : 0;
    float kf[UNROLL][PER_LANE];
    float vf[UNROLL][PER_LANE];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
#pragma unroll
      for (int i = 0; i < PER_LANE; ++i) {
        kf[u][i] = to_float(k_head[row[u] + i]);
        vf[u][i] = to_float(v_head[row[u] + i]);
      }
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      if (base + u >= hi) break;
#pragma unroll
      for (int g = 0; g < MAX_GROUP; ++g) {
        if (g < group) {
          float dot = 0.f;
#pragma unroll
          for (int i = 0; i < PER_LANE; ++i) dot += qf[g][i] * kf[u][i];
#pragma unroll
          for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
          const float new_max = fmaxf(run_max[g], dot);
          const float rescale = __expf(run_max[g] - new_max);
          const float weight = __expf(dot - new_max);
          run_sum[g] = run_sum[g] * rescale + weight;
#pragma unroll
          for (int i = 0; i < PER_LANE; ++i) acc[g][i] = acc[g][i] * rescale + weight * vf[u][i];
          run_max[g] = new_max;
        }
      }
    }
  }

  __shared__ float warp_max[WARPS][MAX_GROUP];
  __shared__ float warp_sum[WARPS][MAX_GROUP];
  __shared__ float warp_acc[WARPS][MAX_GROUP][MAX_HEAD_DIM];
#pragma unroll
  for (int g = 0; g < MAX_GROUP; ++g) {
    if (g < group) {
      if (lane == 0) {
        warp_max[warp][g] = run_max[g];
        warp_sum[warp][g] = run_sum[g];
      }
#pragma unroll
      for (int i = 0; i < PER_LANE; ++i) warp_acc[warp][g][lane * per_lane + i] = acc[g][i];
    }
  }
  __syncthreads();
  for (int at = threadIdx.x; at < group * head_dim; at += blockDim.x) {
    const int g = at / head_dim;
    const int d = at % head_dim;
    float top = -INFINITY;
    for (int w = 0; w < WARPS; ++w) top = fmaxf(top, warp_max[w][g]);
    float sum = 0.f;
    float out = 0.f;
    for (int w = 0; w < WARPS; ++w) {
      if (warp_max[w][g] == -INFINITY) continue;
      const float f = __expf(warp_max[w][g] - top);
      sum += warp_sum[w][g] * f;
      out += warp_acc[w][g][d] * f;
    }
    const size_t cell = (((size_t)seq * kv_heads + kv_head) * parts + part) * group + g;
    part_out[cell * head_dim + d] = out;
    if (d == 0) {
      part_max_sum[cell * 2] = top;
      part_max_sum[cell * 2 + 1] = sum;
    }
  }
}

template <typename T>
__device__ void combine(const float *part_out, const float *part_max_sum, T *out, int heads,
                        int kv_heads, int head_dim, int parts) {
  const int seq = blockIdx.x / heads;
  const int head = blockIdx.x % heads;
  const int group = heads / kv_heads;
  const int kv_head = head / group;
  const int g = head % group;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float top = -INFINITY;
    for (int p = 0; p < parts; ++p) {
      const size_t cell = (((size_t)seq * kv_heads + kv_head) * parts + p) * group + g;
      top = fmaxf(top, part_max_sum[cell * 2]);
    }
    float sum = 0.f;
    float value = 0.f;
    for (int p = 0; p < parts; ++p) {
      const size_t cell = (((size_t)seq * kv_heads + kv_head) * parts + p) * group + g;
      const float part_max = part_max_sum[cell * 2];
      if (part_max == -INFINITY) continue;
      const float f = __expf(part_max - top);
      sum += part_max_sum[cell * 2 + 1] * f;
      value += part_out[cell * head_dim + d] * f;
    }
    out[((size_t)seq * heads + head) * head_dim + d] = from_float<T>(sum > 0.f ? value / sum : 0.f);
  }
}

#define DECODE_ATTENTION_PARTIAL(T, NAME, DIM)                                                     \
  extern "C" __global__ void decode_attention_partial_##NAME##_d##DIM(                              \
      const T *q, const T *k, const T *v, const uint32_t *table, const uint32_t *lens,             \
      float *part_out, float *part_max_sum, int heads, int kv_heads, int head_dim, int slots,      \
      int table_len, int part_len, int window, float scale) {                                      \
    partial<T, DIM / 32>(q, k, v, table, lens, part_out, part_max_sum, heads, kv_heads, head_dim, \
                         slots, table_len, part_len, window, scale);                              \
  }

#define DECODE_ATTENTION(T, NAME)                                                                  \
  DECODE_ATTENTION_PARTIAL(T, NAME, 32)                                                            \
  DECODE_ATTENTION_PARTIAL(T, NAME, 64)                                                            \
  DECODE_ATTENTION_PARTIAL(T, NAME, 128)                                                           \
  DECODE_ATTENTION_PARTIAL(T, NAME, 256)                                                           \
  extern "C" __global__ void decode_attention_combine_##NAME(                                       \
      const float *part_out, const float *part_max_sum, T *out, int heads, int kv_heads,           \
      int head_dim, int parts) {                                                                   \
    combine<T>(part_out, part_max_sum, out, heads, kv_heads, head_dim, parts);                      \
  }

DECODE_ATTENTION(float, f32)
DECODE_ATTENTION(__half, f16)
DECODE_ATTENTION(__nv_bfloat16, bf16)
