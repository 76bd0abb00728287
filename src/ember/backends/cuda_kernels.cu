// ember's CUDA kernels for the BERT encoder of backends/cupy_backend.py (compiled by NVRTC
// through CuPy, cached on disk by CuPy after the first compile).
//
// Layout: activations are row-major fp16 (tokens, features) with tokens = rows * seq; all
// arithmetic is fp32. One warp per token for the normalisations and per score row for the
// softmax; blockDim.x is a multiple of 32.
#include <cuda_fp16.h>

#define MAX_PER_LANE 32  // hidden <= 32 * 32 = 1024 (the host checks it)
#define NEG_INF __int_as_float(0xff800000)  // NVRTC has no <math.h>: no INFINITY

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Normalise one row held by one warp (lane l holds features l, l + 32, ...: `n` of them) and
// store it: out = (v - mean) / sqrt(var + eps) * gamma + beta, two-pass variance.
__device__ void warp_layernorm_store(half* out, const float* vals, int n, int hidden,
                                     const half* gamma, const half* beta, float eps) {
  const int lane = threadIdx.x & 31;
  float sum = 0.f;
  for (int j = 0; j < n; ++j) sum += vals[j];
  const float mean = warp_sum(sum) / hidden;
  float sq = 0.f;
  for (int j = 0; j < n; ++j) {
    const float d = vals[j] - mean;
    sq += d * d;
  }
  const float inv = rsqrtf(warp_sum(sq) / hidden + eps);
  for (int j = 0; j < n; ++j) {
    const int i = lane + 32 * j;
    out[i] = __float2half((vals[j] - mean) * inv * __half2float(gamma[i]) + __half2float(beta[i]));
  }
}

// The row kernels below give one warp to each row (token or score row): blockDim.x / 32 rows a
// block, no block-wide barriers.
__device__ __forceinline__ long warp_row() {
  return blockIdx.x * (long)(blockDim.x >> 5) + (threadIdx.x >> 5);
}

// out[t] = LayerNorm(word[ids[t]] + pos[t % seq] + type_table[types[t]]); type_table may be null.
extern "C" __global__ void embed_layernorm(half* out, const int* ids, const int* types,
                                           const half* word, const half* pos,
                                           const half* type_table, const half* gamma,
                                           const half* beta, int seq, int hidden, float eps,
                                           long tokens) {
  const long t = warp_row();
  if (t >= tokens) return;
  const long id = ids[t], s = t % seq, ty = types[t];
  float vals[MAX_PER_LANE];
  int n = 0;
  for (int i = threadIdx.x & 31; i < hidden; i += 32, ++n) {
    float v = __half2float(word[id * hidden + i]) + __half2float(pos[s * hidden + i]);
    if (type_table) v += __half2float(type_table[ty * hidden + i]);
    vals[n] = v;
  }
  warp_layernorm_store(out + t * hidden, vals, n, hidden, gamma, beta, eps);
}

// x[t] = LayerNorm(x[t] + y[t] + bias), in place (each lane reads its values before it writes).
extern "C" __global__ void add_layernorm(half* x, const half* y, const half* bias,
                                         const half* gamma, const half* beta, int hidden,
                                         float eps, long tokens) {
  const long t = warp_row();
  if (t >= tokens) return;
  float vals[MAX_PER_LANE];
  int n = 0;
  for (int i = threadIdx.x & 31; i < hidden; i += 32, ++n) {
    vals[n] = __half2float(x[t * hidden + i]) + __half2float(y[t * hidden + i]) +
              __half2float(bias[i]);
  }
  warp_layernorm_store(x + t * hidden, vals, n, hidden, gamma, beta, eps);
}

// qkv (tokens, 3, heads, dim) + bias (3 * hidden) -> q, k, v, each (rows, heads, seq, dim),
// stored one after another at `heads_out` (q at 0, k at tokens * hidden, v at 2 * tokens * hidden).
extern "C" __global__ void split_heads(half* heads_out, const half* qkv, const half* bias,
                                       int seq, int heads, int dim, long tokens) {
  const long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
  const int hidden = heads * dim;
  if (i >= tokens * 3 * hidden) return;
  const int c = i % (3 * hidden);
  const long t = i / (3 * hidden);
  const int which = c / hidden, h = (c % hidden) / dim, d = c % dim;
  const long b = t / seq, s = t % seq;
  const float v = __half2float(qkv[i]) + __half2float(bias[c]);
  heads_out[which * tokens * hidden + ((b * heads + h) * seq + s) * dim + d] = __float2half(v);
}

// One warp per score row (row r of (rows, heads, seq, seq)): probabilities over the keys
// whose mask is 1; a row with no such key (a padding row) gets zeros, never NaN.
extern "C" __global__ void masked_softmax(half* probs, const float* scores, const int* mask,
                                          int seq, int heads, long score_rows) {
  const long r = warp_row();
  if (r >= score_rows) return;
  const int lane = threadIdx.x & 31;
  const long b = r / ((long)heads * seq);
  const float* x = scores + r * seq;
  const int* m = mask + b * seq;
  half* p = probs + r * seq;
  float mx = NEG_INF;
  for (int j = lane; j < seq; j += 32)
    if (m[j]) mx = fmaxf(mx, x[j]);
  mx = warp_max(mx);
  float sum = 0.f;
  for (int j = lane; j < seq; j += 32)
    if (m[j]) sum += __expf(x[j] - mx);
  const float total = warp_sum(sum);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int j = lane; j < seq; j += 32) p[j] = __float2half(m[j] ? __expf(x[j] - mx) * inv : 0.f);
}

// ctx (rows, heads, seq, dim) -> out (tokens, heads * dim).
extern "C" __global__ void merge_heads(half* out, const half* ctx, int seq, int heads, int dim,
                                       long total) {
  const long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int hidden = heads * dim;
  const long t = i / hidden;
  const int c = i % hidden, h = c / dim, d = c % dim;
  const long b = t / seq, s = t % seq;
  out[i] = ctx[((b * heads + h) * seq + s) * dim + d];
}

// y = act(y + bias) in place over (n / cols, cols). act: 0 none, 1 gelu (erf), 2 gelu (tanh),
// 3 relu, 4 tanh.
extern "C" __global__ void bias_act(half* y, const half* bias, int cols, long n, int act) {
  const long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = __half2float(y[i]) + __half2float(bias[i % cols]);
  if (act == 1) {
    v = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
  } else if (act == 2) {
    v = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
  } else if (act == 3) {
    v = fmaxf(v, 0.f);
  } else if (act == 4) {
    v = tanhf(v);
  }
  y[i] = __float2half(v);
}

// y (float) += bias (half) over (n / cols, cols).
extern "C" __global__ void add_bias_f32(float* y, const half* bias, int cols, long n) {
  const long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
  if (i < n) y[i] += __half2float(bias[i % cols]);
}

// One block per row: out[b] (float) pools x[b] (seq, hidden) over the tokens whose mask is 1.
// method: 0 mean, 1 cls (first token), 2 max, 3 last token. fp32 sums, as sentence-transformers.
extern "C" __global__ void pool(float* out, const half* x, const int* mask, int seq, int hidden,
                                int method) {
  const long b = blockIdx.x;
  const half* xb = x + b * (long)seq * hidden;
  const int* m = mask + b * seq;
  int last = 0, count = 0;
  for (int s = 0; s < seq; ++s) {
    if (m[s]) {
      ++count;
      last = s;
    }
  }
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float v;
    if (method == 1) {
      v = __half2float(xb[c]);
    } else if (method == 3) {
      v = __half2float(xb[(long)last * hidden + c]);
    } else if (method == 2) {
      v = -65504.f;
      for (int s = 0; s < seq; ++s)
        if (m[s]) v = fmaxf(v, __half2float(xb[(long)s * hidden + c]));
    } else {
      v = 0.f;
      for (int s = 0; s < seq; ++s)
        if (m[s]) v += __half2float(xb[(long)s * hidden + c]);
      v = count > 0 ? v / count : 0.f;
    }
    out[b * hidden + c] = v;
  }
}

// out[b] = x[b, 0] (the [CLS] row), fp16, for the classification head.
extern "C" __global__ void take_cls(half* out, const half* x, int seq, int hidden, long total) {
  const long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
  if (i >= total) return;
  const long b = i / hidden;
  out[i] = x[b * seq * hidden + i % hidden];
}
