/* Fused LIF/IF time loops for spikeforge (forward and surrogate-gradient backward).
 *
 * Each element's membrane lives in registers for the whole sequence: the forward pass
 * reads X once and writes H and S once; the backward pass reads H and dL/dS (and dL/dH)
 * once and writes dL/dX once, running the reverse-time recurrence
 *     dH_t = A_t + beta * B_t * dH_{t+1}
 * in registers. Elements are processed in blocks so the inner loop vectorizes.
 * Built with -ffp-contract=off so H = beta*V + alpha*X rounds like the PyTorch path.
 *
 * Layout: a sequence is T consecutive slices of n elements (any order inside a slice,
 * the same for every buffer). "bf" variants read/write X, S, dL/dS, dL/dX as bfloat16.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define BS 512

static inline float bf2f(uint16_t b) { uint32_t u = ((uint32_t)b) << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* surrogate ids: 0 atan(alpha) 1 sigmoid(alpha) 2 fast-sigmoid(slope) 3 triangle(width) */
static inline float surr(int kind, float p, float u) {
    switch (kind) {
    case 0: { float z = 1.5707963267948966f * p * u; return (0.5f * p) / (1.0f + z * z); }
    case 1: { float s = 1.0f / (1.0f + expf(-p * u)); return p * s * (1.0f - s); }
    case 2: { float d = 1.0f + p * fabsf(u); return (0.5f * p) / (d * d); }
    default: { float d = (1.0f - fabsf(u) / p) / p; return d > 0.0f ? d : 0.0f; }
    }
}

#define LOAD_f32(p, i) ((p)[i])
#define STORE_f32(p, i, v) ((p)[i] = (v))
#define LOAD_bf(p, i) bf2f((p)[i])
#define STORE_bf(p, i, v) ((p)[i] = f2bf(v))

#define DEFINE_FORWARD(NAME, T_IO, LOAD, STORE)                                                   \
void NAME(const T_IO *x, int64_t T, int64_t n, int constant, float beta, float alpha, float th,    \
          int zero_reset, const float *v0, float *h, T_IO *s, float *vT, int nthreads) {          \
    int64_t nb = (n + BS - 1) / BS;                                                                \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                             \
    for (int64_t b = 0; b < nb; b++) {                                                             \
        int64_t i0 = b * BS, m = n - i0 < BS ? n - i0 : BS;                                        \
        float v[BS];                                                                               \
        for (int64_t j = 0; j < m; j++) v[j] = v0 ? v0[i0 + j] : 0.0f;                             \
        for (int64_t t = 0; t < T; t++) {                                                          \
            const int64_t xo = constant ? i0 : t * n + i0, o = t * n + i0;                         \
            for (int64_t j = 0; j < m; j++) {                                                      \
                float xv = LOAD(x, xo + j);                                                        \
                float bv = beta * v[j];                                                            \
                float ax = alpha * xv;                                                             \
                float hv = bv + ax;                                                                \
                float sp = hv >= th ? 1.0f : 0.0f;                                                 \
                h[o + j] = hv;                                                                     \
                STORE(s, o + j, sp);                                                               \
                float r = th * sp;                                                                 \
                v[j] = zero_reset ? (sp > 0.0f ? 0.0f : hv) : hv - r;                              \
            }                                                                                      \
        }                                                                                          \
        for (int64_t j = 0; j < m; j++) vT[i0 + j] = v[j];                                         \
    }                                                                                              \
}

DEFINE_FORWARD(sf_lif_forward_f32, float, LOAD_f32, STORE_f32)
DEFINE_FORWARD(sf_lif_forward_bf16, uint16_t, LOAD_bf, STORE_bf)

/* Backward. gs: dL/dS (may be NULL), gh: dL/dH float (may be NULL), gx: dL/dX output
 * ([n] when constant: summed over time). x and v0 are needed only for the decay
 * gradient (gbeta != NULL): dL/dbeta = sum dH_t * (V_{t-1} - [decay_input] X_t). */
#define DEFINE_BACKWARD(NAME, T_IO, LOAD, STORE)                                                  \
void NAME(const float *h, const T_IO *gs, const float *gh, T_IO *gx, int64_t T, int64_t n,          \
          int constant, float beta, float alpha, float th, int zero_reset, int detach,             \
          int kind, float p, const T_IO *x, const float *v0, int decay_input, double *gbeta,       \
          int nthreads) {                                                                          \
    int64_t nb = (n + BS - 1) / BS;                                                                \
    double acc = 0.0;                                                                              \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) reduction(+:acc)")            \
    for (int64_t b = 0; b < nb; b++) {                                                             \
        int64_t i0 = b * BS, m = n - i0 < BS ? n - i0 : BS;                                        \
        float nxt[BS], sum[BS];                                                                    \
        for (int64_t j = 0; j < m; j++) { nxt[j] = 0.0f; sum[j] = 0.0f; }                           \
        for (int64_t t = T - 1; t >= 0; t--) {                                                     \
            const int64_t o = t * n + i0;                                                          \
            for (int64_t j = 0; j < m; j++) {                                                      \
                float hv = h[o + j];                                                               \
                float sg = surr(kind, p, hv - th);                                                 \
                float a = (gs ? LOAD(gs, o + j) * sg : 0.0f) + (gh ? gh[o + j] : 0.0f);            \
                float fired = hv >= th ? 1.0f : 0.0f;                                              \
                float B = zero_reset ? (detach ? 1.0f - fired : 1.0f - fired - hv * sg)            \
                                     : (detach ? 1.0f : 1.0f - th * sg);                           \
                float dh = a + beta * (B * nxt[j]);                                                \
                nxt[j] = dh;                                                                       \
                if (constant) sum[j] += dh; else STORE(gx, o + j, alpha * dh);                     \
            }                                                                                      \
            if (gbeta) {                                                                           \
                for (int64_t j = 0; j < m; j++) {                                                  \
                    float vp;                                                                      \
                    if (t == 0) vp = v0 ? v0[i0 + j] : 0.0f;                                       \
                    else {                                                                         \
                        float hp = h[o - n + j], fp = hp >= th ? 1.0f : 0.0f;                      \
                        vp = zero_reset ? (fp > 0.0f ? 0.0f : hp) : hp - th * fp;                  \
                    }                                                                              \
                    float g = vp;                                                                  \
                    if (decay_input) g -= LOAD(x, (constant ? i0 : o) + j);                        \
                    acc += (double)(nxt[j] * g);                                                   \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        if (constant) for (int64_t j = 0; j < m; j++) STORE(gx, i0 + j, alpha * sum[j]);           \
    }                                                                                              \
    if (gbeta) *gbeta = acc;                                                                       \
}

DEFINE_BACKWARD(sf_lif_backward_f32, float, LOAD_f32, STORE_f32)
DEFINE_BACKWARD(sf_lif_backward_bf16, uint16_t, LOAD_bf, STORE_bf)
