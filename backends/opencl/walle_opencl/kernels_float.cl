// The floating-point kernels, written once for every float storage type. The loader (device.py)
// appends this file once per type, after kernels.cl, with FN defined as the type's kernel-name
// suffix: f32 (buffers of float) or f16 (buffers of half). kernels.cl maps FN to
//   FT            the element type of the buffers,
//   LD(p, i)      element i of p, as a float,
//   ST(p, i, v)   store the float v as element i of p,
//   RND(v)        v rounded to the storage precision.
// Arithmetic is float32 for both. float16 is storage only (vload_half / vstore_half_rte, OpenCL 1.2
// core, no cl_khr_fp16 needed): each result is computed in float32 and rounded to the nearest
// float16, ties to even, once, when it is stored. Scans and scatter reductions round after every
// step, as NumPy does for float16.

// ---------------------------------------------------------------- elementwise

// Instantiated per function (FOR_EACH_* lists come from the loader), so the function is a
// compile-time constant and the compiler vectorises the body instead of branching on every element.
#define DEFINE_UNARY(NAME)                                                                       \
  __kernel void CAT(KERNEL(unary), _##NAME)(__global const FT* x, __global FT* y, float alpha,   \
                                            float beta, int n) {                                 \
    const int i = get_global_id(0);                                                              \
    if (i < n) ST(y, i, apply_unary(U_##NAME, LD(x, i), alpha, beta));                           \
  }
FOR_EACH_UNARY(DEFINE_UNARY)
#undef DEFINE_UNARY

#define DEFINE_BINARY(NAME)                                                                      \
  __kernel void CAT(KERNEL(binary), _##NAME)(__global const FT* a, __global const FT* b,         \
                                             __global FT* y, __global const int* p, int n) {     \
    const int i = get_global_id(0);                                                              \
    if (i >= n) return;                                                                          \
    const int3 o = broadcast_offsets(p, 2, i);                                                   \
    ST(y, i, apply_binary(B_##NAME, LD(a, o.x), LD(b, o.y)));                                    \
  }
FOR_EACH_BINARY(DEFINE_BINARY)
#undef DEFINE_BINARY

#define DEFINE_COMPARE(NAME)                                                                     \
  __kernel void CAT(KERNEL(compare), _##NAME)(__global const FT* a, __global const FT* b,        \
                                              __global uchar* y, __global const int* p, int n) { \
    const int i = get_global_id(0);                                                              \
    if (i >= n) return;                                                                          \
    const int3 o = broadcast_offsets(p, 2, i);                                                   \
    y[i] = apply_compare(B_##NAME, LD(a, o.x), LD(b, o.y));                                      \
  }
FOR_EACH_COMPARE(DEFINE_COMPARE)
#undef DEFINE_COMPARE

// ---------------------------------------------------------------- reductions

// One work-item per output element, a serial loop over the reduced elements (a float32 accumulator
// for both storage types; NumPy also sums and averages float16 in float32).
// p = [nk, nr, count, kept_shape[nk], kept_strides[nk], red_shape[nr], red_strides[nr]]
__kernel void KERNEL(reduce)(__global const FT* x, __global FT* y, __global const int* p, int fn, int n) {
  int o = get_global_id(0);
  if (o >= n) return;
  const int nk = p[0], nr = p[1], count = p[2];
  __global const int* ks = p + 3;
  __global const int* kst = ks + nk;
  __global const int* rs = kst + nk;
  __global const int* rst = rs + nr;
  int base = 0, rem = o;
  for (int d = nk - 1; d >= 0; --d) {
    base += (rem % ks[d]) * kst[d];
    rem /= ks[d];
  }
  float acc = (fn == R_MAX) ? -INFINITY : (fn == R_MIN) ? INFINITY : (fn == R_PROD) ? 1.0f : 0.0f;
  for (int j = 0; j < count; ++j) {
    int off = base, r = j;
    for (int d = nr - 1; d >= 0; --d) {
      off += (r % rs[d]) * rst[d];
      r /= rs[d];
    }
    const float v = LD(x, off);
    if (fn == R_MAX) acc = (isnan(v) || isnan(acc)) ? NAN : fmax(acc, v);
    else if (fn == R_MIN) acc = (isnan(v) || isnan(acc)) ? NAN : fmin(acc, v);
    else if (fn == R_PROD) acc *= v;
    else acc += v;
  }
  if (fn == R_MEAN) acc /= (float)count;
  ST(y, o, acc);
}

// ARG_REDUCE, CUMULATIVE and TOPK see the input as [outer, dim, inner] and give one work-item to
// each (outer, inner) line; lines are short in practice and this needs no local memory.

// Index (int64) of the largest / smallest element of a line. A NaN wins, as in NumPy; ties go to
// the first index, or the last with select_last.
__kernel void KERNEL(arg_reduce)(__global const FT* x, __global long* y, int dim, int inner, int largest,
                                 int select_last, int n) {
  const int i = get_global_id(0);
  if (i >= n) return;
  const int base = (i / inner) * dim * inner + i % inner;
  float best = LD(x, base);
  int at = 0;
  for (int j = 1; j < dim; ++j) {
    const float v = LD(x, base + j * inner);
    if (isnan(best)) break;
    const bool better = isnan(v) || (largest ? v > best : v < best) || (select_last && v == best);
    if (better) {
      best = v;
      at = j;
    }
  }
  y[i] = at;
}

// Running sum of a line, optionally exclusive (each element sees only its predecessors) and/or
// reversed (accumulating from the end). The sum is rounded to the storage type after every step,
// as NumPy's cumsum does.
__kernel void KERNEL(cumulative)(__global const FT* x, __global FT* y, int dim, int inner, int exclusive,
                                 int reverse, int n) {
  const int i = get_global_id(0);
  if (i >= n) return;
  const int base = (i / inner) * dim * inner + i % inner;
  float acc = 0.0f;
  for (int t = 0; t < dim; ++t) {
    const int at = base + (reverse ? dim - 1 - t : t) * inner;
    const float v = LD(x, at);
    if (exclusive) {
      ST(y, at, acc);
      acc = RND(acc + v);
    } else {
      acc = RND(acc + v);
      ST(y, at, acc);
    }
  }
}

// The k first elements of a line in TopK order (better value first, ties by lower index), by
// repeated selection: the j-th pick is the first element (in that order) after the (j-1)-th, so no
// scratch memory is needed. O(k * dim) per line. Values are copied exactly (float16 -> float -> float16).
__kernel void KERNEL(topk)(__global const FT* x, __global FT* values, __global long* indices, int dim,
                           int inner, int k, int largest, int n) {
  const int i = get_global_id(0);
  if (i >= n) return;
  const int o = i / inner, r = i % inner;
  const int base = o * dim * inner + r;
  float prev_v = 0.0f;
  int prev_i = -1;
  for (int j = 0; j < k; ++j) {
    int pick = -1;
    float pick_v = 0.0f;
    for (int t = 0; t < dim; ++t) {
      const float v = LD(x, base + t * inner);
      if (prev_i >= 0 && !topk_before(prev_v, prev_i, v, t, largest)) continue;
      if (pick < 0 || topk_before(v, t, pick_v, pick, largest)) {
        pick = t;
        pick_v = v;
      }
    }
    ST(values, (o * k + j) * inner + r, pick_v);
    indices[(o * k + j) * inner + r] = pick;
    prev_v = pick_v;
    prev_i = pick;
  }
}

// ---------------------------------------------------------------- dense

// Batched C = act(A B + bias), tiled through local memory (float32 tiles for both storage types).
// Work: (ceil16(N), ceil16(M), batch). offs = [a_off[batch], b_off[batch], bias_off[batch]];
// element strides say how A[m,k], B[k,n] and bias[m,n] are addressed, which covers transposes and
// broadcasting without copies.
__kernel __attribute__((reqd_work_group_size(TILE, TILE, 1)))
void KERNEL(matmul)(__global const FT* A, __global const FT* B, __global const FT* bias,
                    __global FT* C, __global const int* offs, int M, int N, int K, int batch,
                    int sam, int sak, int sbk, int sbn, int has_bias, int bsm, int bsn,
                    int act, float alpha, float beta) {
  __local float As[TILE][TILE];
  __local float Bs[TILE][TILE];
  const int n = get_global_id(0), m = get_global_id(1), z = get_global_id(2);
  const int ln = get_local_id(0), lm = get_local_id(1);
  const int aoff = offs[z], boff = offs[batch + z];
  float acc = 0.0f;
  for (int k0 = 0; k0 < K; k0 += TILE) {
    const int ka = k0 + ln, kb = k0 + lm;
    As[lm][ln] = (m < M && ka < K) ? LD(A, aoff + m * sam + ka * sak) : 0.0f;
    Bs[lm][ln] = (kb < K && n < N) ? LD(B, boff + kb * sbk + n * sbn) : 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = 0; k < TILE; ++k) acc = fma(As[lm][k], Bs[k][ln], acc);
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (m >= M || n >= N) return;
  if (has_bias) acc += LD(bias, offs[2 * batch + z] + m * bsm + n * bsn);
  ST(C, (z * M + m) * N + n, apply_unary(act, acc, alpha, beta));
}

// Direct convolution, one work-item per output element (n, o, oy, ox) over a flat range.
// p = [N, C, H, W, O, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, groups, has_bias, has_residual, act]
__kernel void KERNEL(conv2d)(__global const FT* x, __global const FT* w, __global const FT* bias,
                             __global const FT* res, __global FT* y, __global const int* p,
                             float alpha, float beta, int total) {
  const int i = get_global_id(0);
  if (i >= total) return;
  const int C = p[1], H = p[2], W = p[3], O = p[4], OH = p[5], OW = p[6], KH = p[7], KW = p[8];
  const int SH = p[9], SW = p[10], PT = p[11], PL = p[12], DH = p[13], DW = p[14], G = p[15];
  const int ox = i % OW, oy = (i / OW) % OH, o = (i / (OW * OH)) % O, nb = i / (OW * OH * O);
  const int cg = C / G, og = O / G, g = o / og;
  float acc = 0.0f;
  for (int c = 0; c < cg; ++c) {
    const int xc = ((nb * C + g * cg + c) * H) * W;
    const int wc = ((o * cg + c) * KH) * KW;
    for (int ky = 0; ky < KH; ++ky) {
      const int iy = oy * SH - PT + ky * DH;
      if (iy < 0 || iy >= H) continue;
      for (int kx = 0; kx < KW; ++kx) {
        const int ix = ox * SW - PL + kx * DW;
        if (ix >= 0 && ix < W) acc = fma(LD(x, xc + iy * W + ix), LD(w, wc + ky * KW + kx), acc);
      }
    }
  }
  if (p[16]) acc += LD(bias, o);
  if (p[17]) acc += LD(res, i);
  ST(y, i, apply_unary(p[18], acc, alpha, beta));
}

// p = [H, W, OH, OW, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, is_avg, count_include_pad]
__kernel void KERNEL(pool2d)(__global const FT* x, __global FT* y, __global const int* p, int total) {
  const int i = get_global_id(0);
  if (i >= total) return;
  const int H = p[0], W = p[1], OH = p[2], OW = p[3], KH = p[4], KW = p[5];
  const int SH = p[6], SW = p[7], PT = p[8], PL = p[9], PB = p[10], PR = p[11], DH = p[12], DW = p[13];
  const int is_avg = p[14], include_pad = p[15];
  const int ox = i % OW, oy = (i / OW) % OH, nc = i / (OW * OH);
  const int xc = nc * H * W;
  float acc = is_avg ? 0.0f : -INFINITY;
  int count = 0, padded = 0;
  for (int ky = 0; ky < KH; ++ky) {
    const int iy = oy * SH - PT + ky * DH;
    for (int kx = 0; kx < KW; ++kx) {
      const int ix = ox * SW - PL + kx * DW;
      if (iy < -PT || iy >= H + PB || ix < -PL || ix >= W + PR) continue;  // outside even the padding
      ++padded;
      if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
      const float v = LD(x, xc + iy * W + ix);
      if (is_avg) acc += v;
      else acc = (isnan(v) || isnan(acc)) ? NAN : fmax(acc, v);
      ++count;
    }
  }
  if (is_avg) acc /= (float)(include_pad ? padded : count);
  ST(y, i, acc);
}

// ---------------------------------------------------------------- indexing

// SCATTER after the data has been copied to y: one work-item per inner element walks the updates
// in order, so duplicate rows combine exactly as a serial loop would (each step rounded to the
// storage type, as NumPy's ufunc.at). A bad index sets *flag.
__kernel void KERNEL(scatter)(__global const long* idx, __global const FT* upd, __global FT* y,
                              __global int* flag, int rows, int n_idx, int inner, int fn, int launch) {
  const int r = get_global_id(0);
  if (r >= inner) return;
  for (int j = 0; j < n_idx; ++j) {
    long k = idx[j];
    if (k < 0) k += rows;
    if (k < 0 || k >= rows) {
      *flag = launch;
      return;
    }
    const long at = k * inner + r;
    const float d = LD(y, at), u = LD(upd, (long)j * inner + r);
    float v = u;
    if (fn == B_ADD) v = d + u;
    else if (fn == B_MUL) v = d * u;
    else if (fn == B_MAX) v = d > u ? d : u;
    else if (fn == B_MIN) v = d < u ? d : u;
    ST(y, at, v);
  }
}
