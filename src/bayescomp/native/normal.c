/* Standard normal numbers from the Philox4x32-10 counter-based generator and the Box-Muller transform.
 *
 * Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
 * 128-bit counter is enciphered under a 64-bit key by ten rounds of two 32x32->64-bit multiplications; block i
 * of a call is the counter (i mod 2^32, i / 2^32, 0, 0), so any block can be computed on its own and the loop
 * vectorises. Each block's four 32-bit words give two Box-Muller pairs (Box and Muller 1958): with u1 in (0, 1]
 * and u2 in [0, 1), sqrt(-2 log u1) (cos 2 pi u2, sin 2 pi u2) are two independent N(0, 1) numbers. Uniforms keep
 * the top 24 bits of each word (a float's mantissa), so |z| <= sqrt(2 log 2^25) ~ 5.9: the normal tail beyond it
 * has probability ~4e-9.
 *
 * Written for bayescomp from the published definitions; compiled at first use by bayescomp.native.
 */
#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define CHUNK 256 /* blocks per chunk: 1,024 numbers, buffers on the stack */

/* One Philox4x32-10 block, scalar: the reference the vector path and the tests are checked against. */
void bc_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* The 24-bit integers of blocks first .. first + count - 1 into words[4][CHUNK] (word w of block j at words[w][j]). */
static void philox_words(uint64_t first, int count, uint32_t k0, uint32_t k1, uint32_t words[4][CHUNK],
                         int portable) {
    int j = 0;
#if defined(__AVX512F__)
    if (!portable) {
        const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; j + 16 <= count; j += 16) {
            uint64_t base = first + (uint64_t)j;
            /* counters base .. base + 15: the low words may wrap within the 16 lanes, so the high word is
               computed per lane */
            __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)base), lane);
            __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0, _mm512_set1_epi32((int)(uint32_t)base));
            __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32((int)(uint32_t)(base >> 32)), wrapped,
                                               _mm512_set1_epi32((int)(uint32_t)(base >> 32)), _mm512_set1_epi32(1));
            __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
            uint32_t k0r = k0, k1r = k1;
            for (int round = 0; round < 10; round++) {
                /* 32x32->64 products of the even and the odd lanes, split into high and low words */
                __m512i e0 = _mm512_mul_epu32(c0, m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
                __m512i e1 = _mm512_mul_epu32(c2, m1), o1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
                __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e0, 32), o0);
                __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, e0, _mm512_slli_epi64(o0, 32));
                __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e1, 32), o1);
                __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, e1, _mm512_slli_epi64(o1, 32));
                __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0r));
                __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1r));
                c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
                k0r += PHILOX_W0;
                k1r += PHILOX_W1;
            }
            _mm512_storeu_si512((void *)&words[0][j], _mm512_srli_epi32(c0, 8));
            _mm512_storeu_si512((void *)&words[1][j], _mm512_srli_epi32(c1, 8));
            _mm512_storeu_si512((void *)&words[2][j], _mm512_srli_epi32(c2, 8));
            _mm512_storeu_si512((void *)&words[3][j], _mm512_srli_epi32(c3, 8));
        }
    }
#else
    (void)portable;
#endif
    for (; j < count; j++) {
        uint64_t block = first + (uint64_t)j;
        uint32_t counter[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0u, 0u}, key[2] = {k0, k1}, out[4];
        bc_philox4x32_10(counter, key, out);
        for (int w = 0; w < 4; w++) words[w][j] = out[w] >> 8;
    }
}

/* float -> bfloat16 bits, rounding to nearest even (as PyTorch's conversion); the draws are finite, so NaN
   needs no case */
static inline uint16_t to_bf16(float value) {
    union {
        float f;
        uint32_t u;
    } bits = {value};
    return (uint16_t)((bits.u + 0x7FFFu + ((bits.u >> 16) & 1u)) >> 16);
}

/* n standard normal numbers from block `first_block` of the stream of key `seed`, as floats into out32 or as
   bfloat16 into out16 (the other NULL); `portable` forces the scalar Philox path. */
static void normal_fill(float *restrict out32, uint16_t *restrict out16, int64_t n, uint64_t seed,
                        uint64_t first_block, int portable) {
    const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    const float scale = 1.0f / 16777216.0f, angle = 6.2831853071795865f / 16777216.0f;
    const int64_t blocks = (n + 3) / 4;
    uint32_t words[4][CHUNK];
    float radius0[CHUNK], radius1[CHUNK], cos0[CHUNK], sin0[CHUNK], cos1[CHUNK], sin1[CHUNK], values[4 * CHUNK];
    for (int64_t first = 0; first < blocks; first += CHUNK) {
        int count = blocks - first < CHUNK ? (int)(blocks - first) : CHUNK;
        philox_words(first_block + (uint64_t)first, count, k0, k1, words, portable);
        /* separate loops so that each vectorises with one vector math function */
#pragma omp simd
        for (int j = 0; j < count; j++) {
            radius0[j] = sqrtf(-2.0f * logf(((float)words[0][j] + 0.5f) * scale));
            radius1[j] = sqrtf(-2.0f * logf(((float)words[2][j] + 0.5f) * scale));
        }
#pragma omp simd
        for (int j = 0; j < count; j++) {
            cos0[j] = cosf(angle * (float)words[1][j]);
            cos1[j] = cosf(angle * (float)words[3][j]);
        }
#pragma omp simd
        for (int j = 0; j < count; j++) {
            sin0[j] = sinf(angle * (float)words[1][j]);
            sin1[j] = sinf(angle * (float)words[3][j]);
        }
        for (int j = 0; j < count; j++) {
            values[4 * j] = radius0[j] * cos0[j];
            values[4 * j + 1] = radius0[j] * sin0[j];
            values[4 * j + 2] = radius1[j] * cos1[j];
            values[4 * j + 3] = radius1[j] * sin1[j];
        }
        int64_t left = n - 4 * first, take = left < 4 * (int64_t)count ? left : 4 * (int64_t)count;
        if (out32 != NULL) {
            float *dst = out32 + 4 * first;
            for (int64_t q = 0; q < take; q++) dst[q] = values[q];
        } else {
            uint16_t *dst = out16 + 4 * first;
#pragma omp simd
            for (int64_t q = 0; q < take; q++) dst[q] = to_bf16(values[q]);
        }
    }
}

void bc_normal_fill(float *out, int64_t n, uint64_t seed) { normal_fill(out, NULL, n, seed, 0, 0); }

void bc_normal_fill_bf16(uint16_t *out, int64_t n, uint64_t seed) { normal_fill(NULL, out, n, seed, 0, 0); }

/* the same stream from any block, by either Philox path: for the tests (counter wrap-around, vector = scalar) */
void bc_normal_fill_at(float *out, int64_t n, uint64_t seed, uint64_t first_block, int portable) {
    normal_fill(out, NULL, n, seed, first_block, portable);
}
