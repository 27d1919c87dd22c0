// How fast this machine reads memory: threads (argument 1, default 2) each sum their share of a
// 96 MB buffer (the size of SmolLM2-135M's weights in Q4_1 + the Q8_0 head) with AVX2 loads, 8
// times; prints GB/s per pass. A decode step reads every weight once, so 96 MB at this rate is the
// ceiling on decode tokens per second (docs/performance.md).
//
//   cc -O2 -mavx2 -pthread scripts/membw.c -o /tmp/membw && /tmp/membw 2
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BYTES (96u << 20)

static char *buf;
static long threads;
static volatile float sink;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *read_share(void *arg) {
  size_t len = BYTES / threads;
  const char *p = buf + (long)arg * len;
  __m256 s = _mm256_setzero_ps();
  for (size_t i = 0; i + 128 <= len; i += 128) {
    s = _mm256_add_ps(s, _mm256_load_ps((const float *)(p + i)));
    s = _mm256_add_ps(s, _mm256_load_ps((const float *)(p + i + 32)));
    s = _mm256_add_ps(s, _mm256_load_ps((const float *)(p + i + 64)));
    s = _mm256_add_ps(s, _mm256_load_ps((const float *)(p + i + 96)));
  }
  float out[8];
  _mm256_storeu_ps(out, s);
  sink += out[0];
  return NULL;
}

int main(int argc, char **argv) {
  threads = argc > 1 ? atol(argv[1]) : 2;
  if (threads < 1 || threads > 64) {
    fprintf(stderr, "threads must be 1..64\n");
    return 2;
  }
  buf = aligned_alloc(64, BYTES);
  if (!buf) return 1;
  for (size_t i = 0; i < BYTES; i++) buf[i] = (char)i;
  pthread_t t[64];
  for (int pass = 0; pass < 8; pass++) {
    double start = now();
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, read_share, (void *)i);
    for (long i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double s = now() - start;
    printf("%ld threads: %.1f GB/s (96 MB in %.2f ms)\n", threads, BYTES / s / 1e9, s * 1e3);
  }
  return 0;
}
