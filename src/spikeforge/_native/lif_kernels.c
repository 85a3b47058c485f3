/* Fused LIF/IF time loops for spikeforge (forward and surrogate-gradient backward).
 *
 * Each element's membrane lives in registers for the whole sequence: the forward pass
 * reads X once and writes H and S once; the backward pass reads H and dL/dS (and dL/dH)
 * once and writes dL/dX once, running the reverse-time recurrence
 *     dH_t = A_t + beta * B_t * dH_{t+1}
 * in registers. Elements are processed in blocks so the inner loop vectorizes; every
 * option is a compile-time constant of an always-inlined block function, so each
 * combination gets its own branch-free loop. Built with -ffp-contract=off so that
 * H = beta*V + alpha*X rounds like the PyTorch path.
 *
 * Layout: a sequence is T consecutive slices of n elements (any order inside a slice,
 * the same for every buffer). The "_bf16" entry points read/write X, S, dL/dS and
 * dL/dX as bfloat16 (H and V are always float32).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define BS 256
#define INLINE static inline __attribute__((always_inline))

INLINE float bf2f(uint16_t b) { uint32_t u = ((uint32_t)b) << 16; float f; memcpy(&f, &u, 4); return f; }
INLINE uint16_t f2bf(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
INLINE float ld(const void *p, int64_t i, const int bf) {
    return bf ? bf2f(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
INLINE void st(void *p, int64_t i, float v, const int bf) {
    if (bf) ((uint16_t *)p)[i] = f2bf(v); else ((float *)p)[i] = v;
}

/* surrogate ids: 0 atan(alpha) 1 sigmoid(alpha) 2 fast-sigmoid(slope) 3 triangle(width) */
INLINE float surr(const int kind, float p, float u) {
    if (kind == 0) { float z = 1.5707963267948966f * p * u; return (0.5f * p) / (1.0f + z * z); }
    if (kind == 1) { float s = 1.0f / (1.0f + expf(-p * u)); return p * s * (1.0f - s); }
    if (kind == 2) { float d = 1.0f + p * fabsf(u); return (0.5f * p) / (d * d); }
    float d = (1.0f - fabsf(u) / p) / p;
    return d > 0.0f ? d : 0.0f;
}

INLINE void fwd_block(const void *x, int64_t T, int64_t n, int64_t i0, int64_t m, float beta, float alpha,
                      float th, const float *v0, float *h, void *s, float *vT, float out_scale,
                      const int bf, const int constant, int zero_reset, const int burst, float gmax) {
    const float zr = zero_reset ? 1.0f : 0.0f, nzr = 1.0f - zr;
    float v[BS];
    for (int64_t j = 0; j < m; j++) v[j] = v0 ? v0[i0 + j] : 0.0f;
    for (int64_t t = 0; t < T; t++) {
        const int64_t xo = constant ? i0 : t * n + i0, o = t * n + i0;
        if (burst) {
            /* burst spikes, forward only (h is not written): S = clamp(floor(H/th), 0, Gamma),
             * computed as trunc(min(max(H/th, 0), Gamma)) -- the same value for every non-NaN H
             * (Gamma is an integer and trunc = floor on [0, Gamma]); "fired" (S > 0) is H >= th,
             * which for th > 0 is the same as H/th >= 1 under IEEE division. Written this way
             * (this order of max and min, no select on S) GCC vectorizes the loop. */
            for (int64_t j = 0; j < m; j++) {
                float hv = beta * v[j] + alpha * ld(x, xo + j, bf);
                float r = hv / th;
                r = r > 0.0f ? r : 0.0f;
                r = r > gmax ? gmax : r;
                float sp = (float)(int32_t)r, fired = hv >= th ? 1.0f : 0.0f;
                st(s, o + j, sp * out_scale, bf);
                v[j] = hv - zr * fired * hv - nzr * sp * th;  /* zero: 0 if fired; subtract: H - th*S */
            }
            continue;
        }
        for (int64_t j = 0; j < m; j++) {
            float bv = beta * v[j];
            float ax = alpha * ld(x, xo + j, bf);
            float hv = bv + ax;
            float sp = hv >= th ? 1.0f : 0.0f;
            if (h) h[o + j] = hv;
            st(s, o + j, sp * out_scale, bf);
            v[j] = hv - sp * (zr * hv + nzr * th);  /* zero: H(1-S); subtract: H - th*S */
        }
    }
    for (int64_t j = 0; j < m; j++) vT[i0 + j] = v[j];
}

/* h may be NULL (inference: nothing saved for backward); spikes are stored as S*out_scale.
 * max_spikes > 1 gives burst spikes (forward only: the backward assumes S in {0, 1}). */
#define FWD_ARGS const void *x, int64_t T, int64_t n, int constant, float beta, float alpha, float th, \
                 int zero_reset, const float *v0, float *h, void *s, float *vT, float out_scale, int nthreads, \
                 int max_spikes
#define FWD_CALL(BF, C, Z, B) \
    fwd_block(x, T, n, i0, m, beta, alpha, th, v0, h, s, vT, out_scale, BF, C, Z, B, (float)max_spikes)

#define DEFINE_FORWARD(NAME, BF)                                                                 \
void NAME(FWD_ARGS) {                                                                             \
    int64_t nb = (n + BS - 1) / BS;                                                               \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                            \
    for (int64_t b = 0; b < nb; b++) {                                                            \
        int64_t i0 = b * BS, m = n - i0 < BS ? n - i0 : BS;                                       \
        if (max_spikes > 1) {                                                                     \
            if (constant) FWD_CALL(BF, 1, zero_reset, 1); else FWD_CALL(BF, 0, zero_reset, 1);    \
        } else {                                                                                  \
            if (constant) FWD_CALL(BF, 1, zero_reset, 0); else FWD_CALL(BF, 0, zero_reset, 0);    \
        }                                                                                         \
    }                                                                                             \
}

DEFINE_FORWARD(sf_lif_forward_f32, 0)
DEFINE_FORWARD(sf_lif_forward_bf16, 1)

/* dL/dH and dL/dX of one block; returns the block's part of dL/dbeta when wanted.
 * gs (dL/dS) is required (pass zeros when the spikes are unused); gh may be NULL. */
INLINE double bwd_block(const float *h, const void *gs, const float *gh, void *gx, int64_t T, int64_t n,
                        int64_t i0, int64_t m, float beta, float alpha, float th, float p, const void *x,
                        const float *v0, int decay_input, int want_beta,
                        const int bf, const int constant, int zero_reset, int detach,
                        const int kind, const int has_gh) {
    /* B = dV/dH = 1 - zr*S - (1-detach) * f' * (zr*H + (1-zr)*th) */
    const float zr = zero_reset ? 1.0f : 0.0f, nzr = 1.0f - zr, nd = detach ? 0.0f : 1.0f;
    float nxt[BS], sum[BS];
    double acc = 0.0, bacc[BS];
    for (int64_t j = 0; j < m; j++) { nxt[j] = 0.0f; sum[j] = 0.0f; bacc[j] = 0.0; }
    for (int64_t t = T - 1; t >= 0; t--) {
        const int64_t o = t * n + i0;
        for (int64_t j = 0; j < m; j++) {
            float hv = h[o + j];
            float sg = surr(kind, p, hv - th);
            float a = ld(gs, o + j, bf) * sg + (has_gh ? gh[o + j] : 0.0f);
            float fired = hv >= th ? 1.0f : 0.0f;
            float B = 1.0f - zr * fired - nd * sg * (zr * hv + nzr * th);
            float dh = a + beta * (B * nxt[j]);
            nxt[j] = dh;
            if (constant) sum[j] += dh; else st(gx, o + j, alpha * dh, bf);
        }
        if (want_beta) {
            /* dL/dbeta += dH_t * (V_{t-1} - X_t if decay_input); one double accumulator per
             * lane so that the loop vectorizes (a single running sum would not) */
            const int64_t xo = constant ? i0 : o;
            if (t == 0) {
                for (int64_t j = 0; j < m; j++) {
                    float g = v0 ? v0[i0 + j] : 0.0f;
                    if (decay_input) g -= ld(x, xo + j, bf);
                    bacc[j] += (double)(nxt[j] * g);
                }
            } else {
                const float *hp = h + (o - n);
                for (int64_t j = 0; j < m; j++) {
                    float hv = hp[j];
                    int fp = hv >= th;
                    float g = zero_reset ? (fp ? 0.0f : hv) : (fp ? hv - th : hv);
                    if (decay_input) g -= ld(x, xo + j, bf);
                    bacc[j] += (double)(nxt[j] * g);
                }
            }
        }
    }
    if (constant) for (int64_t j = 0; j < m; j++) st(gx, i0 + j, alpha * sum[j], bf);
    if (want_beta) for (int64_t j = 0; j < m; j++) acc += bacc[j];
    return acc;
}

#define BWD_CALL(BF, C, K, GH)                                                                   \
    bwd_block(h, gs, gh, gx, T, n, i0, m, beta, alpha, th, p, x, v0, decay_input, gbeta != 0,   \
              BF, C, zero_reset, detach, K, GH)
#define BWD_KIND(BF, C, GH)                                                                      \
    switch (kind) {                                                                              \
    case 0: r = BWD_CALL(BF, C, 0, GH); break;                                                  \
    case 1: r = BWD_CALL(BF, C, 1, GH); break;                                                  \
    case 2: r = BWD_CALL(BF, C, 2, GH); break;                                                  \
    default: r = BWD_CALL(BF, C, 3, GH); break;                                                 \
    }

#define DEFINE_BACKWARD(NAME, BF)                                                                \
void NAME(const float *h, const void *gs, const float *gh, void *gx, int64_t T, int64_t n,        \
          int constant, float beta, float alpha, float th, int zero_reset, int detach,            \
          int kind, float p, const void *x, const float *v0, int decay_input, double *gbeta,      \
          int nthreads) {                                                                         \
    int64_t nb = (n + BS - 1) / BS;                                                               \
    double acc = 0.0;                                                                             \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) reduction(+:acc)")           \
    for (int64_t b = 0; b < nb; b++) {                                                            \
        int64_t i0 = b * BS, m = n - i0 < BS ? n - i0 : BS;                                       \
        double r = 0.0;                                                                           \
        if (constant) { if (gh) { BWD_KIND(BF, 1, 1) } else { BWD_KIND(BF, 1, 0) } }              \
        else { if (gh) { BWD_KIND(BF, 0, 1) } else { BWD_KIND(BF, 0, 0) } }                       \
        acc += r;                                                                                 \
    }                                                                                             \
    if (gbeta) *gbeta = acc;                                                                      \
}

DEFINE_BACKWARD(sf_lif_backward_f32, 0)
DEFINE_BACKWARD(sf_lif_backward_bf16, 1)

/* Lateral-inhibition max-pool over time for kernel = stride = (kh, kw), no padding:
 * A_t = A_{t-1} + X_t; out_t = MP(A_t) - MP(A_{t-1}). The running sums acc and the last
 * maxima prev are float32 whatever the dtype of x/out (bf16 entry points read X and write
 * out as bfloat16, out rounded to nearest even once); rows and columns beyond Ho*kh, Wo*kw
 * are not pooled (as F.max_pool2d), and the channels-last kernel does not keep their sums.
 *
 * Contiguous layout: x [T, planes, H, W]; acc [planes, H, W]; prev [planes, Ho, Wo];
 * out [T, planes, Ho, Wo]. Each plane stays in L1/L2 while it is pooled. */
INLINE void lipool_planes(const void *x, int64_t T, int64_t planes, int64_t H, int64_t W, int kh, int kw,
                          float *acc, float *prev, void *out, int nthreads, const int bf) {
    const int64_t Ho = H / kh, Wo = W / kw, hw = H * W, ohw = Ho * Wo;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (int64_t p = 0; p < planes; p++) {
        float *a = acc + p * hw, *pv = prev + p * ohw;
        for (int64_t t = 0; t < T; t++) {
            const int64_t xo = (t * planes + p) * hw;
            for (int64_t i = 0; i < hw; i++) a[i] += ld(x, xo + i, bf);
            const int64_t oo = (t * planes + p) * ohw;
            if (kh == 2 && kw == 2) {  /* the common 2x2 pool: a loop over ox that vectorizes */
                for (int64_t oy = 0; oy < Ho; oy++) {
                    const float *r0 = a + 2 * oy * W, *r1 = r0 + W;
                    float *pr = pv + oy * Wo;
                    const int64_t ob = oo + oy * Wo;
                    for (int64_t ox = 0; ox < Wo; ox++) {
                        float m = r0[2 * ox], v = r0[2 * ox + 1];  /* same order of comparisons as below */
                        m = v > m ? v : m;
                        v = r1[2 * ox]; m = v > m ? v : m;
                        v = r1[2 * ox + 1]; m = v > m ? v : m;
                        st(out, ob + ox, m - pr[ox], bf);
                        pr[ox] = m;
                    }
                }
                continue;
            }
            for (int64_t oy = 0; oy < Ho; oy++) {
                for (int64_t ox = 0; ox < Wo; ox++) {
                    const float *w = a + oy * kh * W + ox * kw;
                    float m = w[0];
                    for (int dy = 0; dy < kh; dy++)
                        for (int dx = 0; dx < kw; dx++) { float v = w[dy * W + dx]; m = v > m ? v : m; }
                    st(out, oo + oy * Wo + ox, m - pv[oy * Wo + ox], bf);
                    pv[oy * Wo + ox] = m;
                }
            }
        }
    }
}

void sf_lipool_f32(const float *x, int64_t T, int64_t planes, int64_t H, int64_t W, int kh, int kw,
                   float *acc, float *prev, float *out, int nthreads) {
    lipool_planes(x, T, planes, H, W, kh, kw, acc, prev, out, nthreads, 0);
}

void sf_lipool_bf16(const void *x, int64_t T, int64_t planes, int64_t H, int64_t W, int kh, int kw,
                    float *acc, float *prev, void *out, int nthreads) {
    lipool_planes(x, T, planes, H, W, kh, kw, acc, prev, out, nthreads, 1);
}

/* Channels-last layout: x [T, N, H, W, C]; acc [N, H, W, C]; prev [N, Ho, Wo, C];
 * out [T, N, Ho, Wo, C]. One task is one output row (n, oy): its kh input rows of
 * acc (kh*W*C floats) stay in L1/L2 for all T steps; the channel loop is innermost
 * and contiguous, so it vectorizes. */
INLINE void lipool_cl(const void *x, int64_t T, int64_t N, int64_t H, int64_t W, int64_t C, int kh, int kw,
                      float *acc, float *prev, void *out, int nthreads, const int bf) {
    const int64_t Ho = H / kh, Wo = W / kw, wc = W * C, owc = Wo * C, used = Wo * kw * C;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (int64_t r = 0; r < N * Ho; r++) {
        const int64_t n = r / Ho, oy = r % Ho;
        float *a = acc + (n * H + oy * kh) * wc, *pv = prev + (n * Ho + oy) * owc;
        for (int64_t t = 0; t < T; t++) {
            const int64_t xo = ((t * N + n) * H + oy * kh) * wc;
            for (int dy = 0; dy < kh; dy++)
                for (int64_t i = 0; i < used; i++) a[dy * wc + i] += ld(x, xo + dy * wc + i, bf);
            const int64_t oo = ((t * N + n) * Ho + oy) * owc;
            if (kh == 2 && kw == 2) {  /* the common 2x2 pool: the channel loop vectorizes */
                for (int64_t ox = 0; ox < Wo; ox++) {
                    const float *w0 = a + ox * 2 * C, *w1 = w0 + wc;
                    float *pc = pv + ox * C;
                    const int64_t ob = oo + ox * C;
                    for (int64_t c = 0; c < C; c++) {
                        float m = w0[c], v = w0[C + c];  /* same order of comparisons as below */
                        m = v > m ? v : m;
                        v = w1[c]; m = v > m ? v : m;
                        v = w1[C + c]; m = v > m ? v : m;
                        st(out, ob + c, m - pc[c], bf);
                        pc[c] = m;
                    }
                }
                continue;
            }
            for (int64_t ox = 0; ox < Wo; ox++) {
                const float *w = a + ox * kw * C;
                float *pc = pv + ox * C;
                for (int64_t c = 0; c < C; c++) {
                    float m = w[c];
                    for (int dy = 0; dy < kh; dy++)
                        for (int dx = 0; dx < kw; dx++) { float v = w[dy * wc + dx * C + c]; m = v > m ? v : m; }
                    st(out, oo + ox * C + c, m - pc[c], bf);
                    pc[c] = m;
                }
            }
        }
    }
}

void sf_lipool_cl_f32(const float *x, int64_t T, int64_t N, int64_t H, int64_t W, int64_t C, int kh, int kw,
                      float *acc, float *prev, float *out, int nthreads) {
    lipool_cl(x, T, N, H, W, C, kh, kw, acc, prev, out, nthreads, 0);
}

void sf_lipool_cl_bf16(const void *x, int64_t T, int64_t N, int64_t H, int64_t W, int64_t C, int kh, int kw,
                       float *acc, float *prev, void *out, int nthreads) {
    lipool_cl(x, T, N, H, W, C, kh, kw, acc, prev, out, nthreads, 1);
}
