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

// --- fused attention ------------------------------------------------------------------------
// FlashAttention-2's schedule with Ampere-style tensor-core MMAs (mma.sync m16n8k16: fp16
// operands, fp32 accumulation), which Hopper runs too. One block of FLASH_WARPS warps takes
// FLASH_Q queries of one (row, head); each warp owns 16 queries and keeps their scores, running
// max, running sum and output in registers, so no score is ever written to memory. Keys and
// values come through shared memory FLASH_K at a time. Q, K and V are read straight from the QKV
// GEMM's output (tokens, 3, heads, dim) with its bias added, and the context is written in the
// merged (tokens, heads * dim) layout: no split or merge kernel.
#define FLASH_WARPS 4
#define FLASH_Q (16 * FLASH_WARPS)
#define FLASH_K 64
#define FLASH_PAD 8  // halves after each shared row: 16 bytes, so fragment loads avoid bank conflicts

__device__ __forceinline__ void mma_16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&h);
}

__device__ __forceinline__ unsigned shared_pair(const half* p) {
  return *reinterpret_cast<const unsigned*>(p);
}

// p[0] and p[stride] (one dim of two consecutive keys) as a pair, p[0] in the low half.
__device__ __forceinline__ unsigned key_pair(const half* p, int stride) {
  return (unsigned)__half_as_ushort(p[0]) | ((unsigned)__half_as_ushort(p[stride]) << 16);
}

// Two consecutive values of x + bias, rounded to fp16 as split_heads rounds them.
__device__ __forceinline__ unsigned biased_pair(const half* x, const half* bias) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(bias));
  return pack_half2(a.x + b.x, a.y + b.y);
}

// Fragment layouts (PTX ISA, mma.m16n8k16 with .f16 A/B and .f32 C): with g = lane / 4 and
// t = lane % 4, A regs {0,1,2,3} hold (row g, cols 2t..2t+1), (g + 8, 2t), (g, 2t + 8),
// (g + 8, 2t + 8); B regs {0,1} hold (k 2t..2t+1, col g), (k 2t + 8, col g); C holds (g, 2t..2t+1)
// then (g + 8, 2t..2t+1).
template <int D>
__device__ void flash_block(half* out, const half* qkv, const half* bias, const int* mask,
                            int seq, int heads, float scale) {
  extern __shared__ __align__(16) unsigned char smem[];
  half* ks = reinterpret_cast<half*>(smem);   // (FLASH_K, D + PAD): keys
  half* vs = ks + FLASH_K * (D + FLASH_PAD);  // (FLASH_K, D + PAD): values
  float* key_bias = reinterpret_cast<float*>(vs + FLASH_K * (D + FLASH_PAD));  // 0 or -inf

  const int q_blocks = (seq + FLASH_Q - 1) / FLASH_Q;
  const int qb = blockIdx.x % q_blocks;
  const int h = (blockIdx.x / q_blocks) % heads;
  const long b = blockIdx.x / ((long)q_blocks * heads);
  const int hidden = heads * D, stride = 3 * hidden;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const half* base = qkv + b * seq * stride;  // this row's tokens
  const int* m = mask + b * seq;
  const int q0 = qb * FLASH_Q + warp * 16;  // this warp's first query
  const bool active = q0 < seq;
  const float scale_log2 = scale * 1.4426950408889634f;  // exp(x) = exp2(x * log2(e))

  // The warp's queries as A fragments, one per 16 dims; queries past the end are zeros.
  unsigned qa[D / 16][4];
  {
    const half* qbias = bias + h * D;
    const int r0 = q0 + g, r1 = q0 + g + 8;
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      const int d = c * 16 + 2 * t;
      const half* p0 = base + (long)r0 * stride + h * D;
      const half* p1 = base + (long)r1 * stride + h * D;
      qa[c][0] = r0 < seq ? biased_pair(p0 + d, qbias + d) : 0u;
      qa[c][1] = r1 < seq ? biased_pair(p1 + d, qbias + d) : 0u;
      qa[c][2] = r0 < seq ? biased_pair(p0 + d + 8, qbias + d + 8) : 0u;
      qa[c][3] = r1 < seq ? biased_pair(p1 + d + 8, qbias + d + 8) : 0u;
    }
  }
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float row_max[2] = {NEG_INF, NEG_INF}, row_sum[2] = {0.f, 0.f};

  for (int k0 = 0; k0 < seq; k0 += FLASH_K) {
    __syncthreads();  // the previous tile is no longer read
    // K and V of keys k0 .. k0 + FLASH_K with their bias (zeros past the end): 8 values a
    // thread, one 16-byte load each of K, V and their biases, one 16-byte store each.
    for (int i = threadIdx.x; i < FLASH_K * D / 8; i += blockDim.x) {
      const int key = i / (D / 8), d = (i % (D / 8)) * 8;
      uint4 k8 = make_uint4(0u, 0u, 0u, 0u), v8 = k8;
      if (k0 + key < seq) {
        const half* kp = base + (long)(k0 + key) * stride + hidden + h * D + d;
        const half* kb = bias + hidden + h * D + d;
        const uint4 kr = *reinterpret_cast<const uint4*>(kp);
        const uint4 vr = *reinterpret_cast<const uint4*>(kp + hidden);
        const uint4 kbr = *reinterpret_cast<const uint4*>(kb);
        const uint4 vbr = *reinterpret_cast<const uint4*>(kb + hidden);
        const half* kh = reinterpret_cast<const half*>(&kr);
        const half* vh = reinterpret_cast<const half*>(&vr);
        const half* kbh = reinterpret_cast<const half*>(&kbr);
        const half* vbh = reinterpret_cast<const half*>(&vbr);
        unsigned* k2 = reinterpret_cast<unsigned*>(&k8);
        unsigned* v2 = reinterpret_cast<unsigned*>(&v8);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          k2[j] = biased_pair(kh + 2 * j, kbh + 2 * j);
          v2[j] = biased_pair(vh + 2 * j, vbh + 2 * j);
        }
      }
      *reinterpret_cast<uint4*>(ks + key * (D + FLASH_PAD) + d) = k8;
      *reinterpret_cast<uint4*>(vs + key * (D + FLASH_PAD) + d) = v8;
    }
    for (int j = threadIdx.x; j < FLASH_K; j += blockDim.x)
      key_bias[j] = (k0 + j < seq && m[k0 + j]) ? 0.f : NEG_INF;
    __syncthreads();
    if (!active) continue;

    // Scores of the warp's 16 queries against the tile's keys, in log2 units, masked.
    float s[FLASH_K / 8][4];
#pragma unroll
    for (int j = 0; j < FLASH_K / 8; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
      const half* krow = ks + (j * 8 + g) * (D + FLASH_PAD) + 2 * t;
#pragma unroll
      for (int c = 0; c < D / 16; ++c)
        mma_16816(s[j], qa[c], shared_pair(krow + c * 16), shared_pair(krow + c * 16 + 8));
      const float kb0 = key_bias[j * 8 + 2 * t], kb1 = key_bias[j * 8 + 2 * t + 1];
      s[j][0] = s[j][0] * scale_log2 + kb0;
      s[j][1] = s[j][1] * scale_log2 + kb1;
      s[j][2] = s[j][2] * scale_log2 + kb0;
      s[j][3] = s[j][3] * scale_log2 + kb1;
    }
    // Online softmax: each row's max over the four lanes that share it, rescale what came
    // before. A row with no unmasked key so far keeps max -inf and contributes zeros.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = NEG_INF;
#pragma unroll
      for (int j = 0; j < FLASH_K / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float new_max = fmaxf(row_max[r], mx);
      const float ref = new_max == NEG_INF ? 0.f : new_max;
      const float alpha = exp2f(row_max[r] - ref);
      row_max[r] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < FLASH_K / 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - ref);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - ref);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha + sum;  // this lane's share; summed over the quad at the end
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        acc[n][2 * r] *= alpha;
        acc[n][2 * r + 1] *= alpha;
      }
    }
    // acc += P · V: the score fragments are the A fragments of P (16 keys per step).
#pragma unroll
    for (int kc = 0; kc < FLASH_K / 16; ++kc) {
      const unsigned pa[4] = {
          pack_half2(s[2 * kc][0], s[2 * kc][1]), pack_half2(s[2 * kc][2], s[2 * kc][3]),
          pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
          pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
      // V's B fragment pairs two keys of one dim: two 16-bit loads per register (the rows
      // are 16 bytes apart in banks, so the warp's loads never conflict).
      const int row = D + FLASH_PAD;
      const half* v0 = vs + (kc * 16 + 2 * t) * row + g;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        mma_16816(acc[n], pa, key_pair(v0 + n * 8, row), key_pair(v0 + 8 * row + n * 8, row));
    }
  }
  if (!active) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = row_sum[r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const float inv = total > 0.f ? 1.f / total : 0.f;
    const int q = q0 + g + 8 * r;
    if (q >= seq) continue;
    half* o = out + (b * seq + q) * (long)hidden + h * D + 2 * t;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<unsigned*>(o + n * 8) =
          pack_half2(acc[n][2 * r] * inv, acc[n][2 * r + 1] * inv);
  }
}

// out (tokens, heads * dim) = softmax(q kᵀ · scale over the keys whose mask is 1) · v, per row
// and head, with q, k, v = qkv (tokens, 3, heads, dim) + bias. Grid: rows * heads *
// ceil(seq / FLASH_Q) blocks of 32 * FLASH_WARPS threads; dim is 16, 32 or 64 (each size a
// template instance: 128 would take every instance to 173 registers a thread, from 126).
extern "C" __global__ void flash_attention(half* out, const half* qkv, const half* bias,
                                           const int* mask, int seq, int heads, int dim,
                                           float scale) {
  if (dim == 64) {
    flash_block<64>(out, qkv, bias, mask, seq, heads, scale);
  } else if (dim == 32) {
    flash_block<32>(out, qkv, bias, mask, seq, heads, scale);
  } else if (dim == 16) {
    flash_block<16>(out, qkv, bias, mask, seq, heads, scale);
  }
}
