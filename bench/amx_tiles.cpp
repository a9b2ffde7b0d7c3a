// How fast this CPU's AMX tiles multiply bfloat16, with and without tile loads between the
// products: why a 2x2-blocked GEMM (four loads per four products) runs at a third of the
// products' own speed here (BENCHMARKS.md, run Y). One thread, data in L1 or L2.
//
//   g++ -O2 -march=native bench/amx_tiles.cpp -o /tmp/amx_tiles && /tmp/amx_tiles
//
// Needs a CPU with AMX (Sapphire Rapids or later) and Linux 5.16+.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

struct alignas(64) TileConfig {  // eight tiles of 16 rows by 64 bytes
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = 16;
  }
};

constexpr long kIters = 2000000;  // four products each

template <class Body>
void report(const char* name, Body body) {
  const auto t0 = std::chrono::steady_clock::now();
  body();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double products = kIters * 4.0;  // each 16x16x32 multiply-adds
  std::printf("%-44s %6.2f ns/product  %5.2f TMAC/s\n", name, s / products * 1e9,
              products * 16 * 16 * 32 / s / 1e12);
}

int main() {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) {
    std::puts("no AMX tiles for this process (CPU or kernel)");
    return 1;
  }
  const TileConfig config;
  _tile_loadconfig(&config);
  std::vector<uint16_t> a(1 << 20, 0x3f80), b(1 << 20, 0x3f80);  // 2 MB each of bfloat16 1.0
  const uint16_t *A = a.data(), *B = b.data();
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_loadd(4, A, 64); _tile_loadd(5, A + 512, 64); _tile_loadd(6, B, 64);
  _tile_loadd(7, B + 512, 64);
#define PRODUCTS       \
  _tile_dpbf16ps(0, 4, 6); \
  _tile_dpbf16ps(1, 4, 7); \
  _tile_dpbf16ps(2, 5, 6); \
  _tile_dpbf16ps(3, 5, 7)
  report("products only (2x2, operands resident)", [&] {
    for (long i = 0; i < kIters; ++i) {
      PRODUCTS;
    }
  });
  report("one tile load per four products", [&] {
    for (long i = 0; i < kIters; ++i) {
      _tile_loadd(7, B + 512, 64);
      PRODUCTS;
    }
  });
  report("2x2: four loads (L1) then four products", [&] {
    for (long i = 0; i < kIters; ++i) {
      _tile_loadd(4, A, 64); _tile_loadd(5, A + 512, 64);
      _tile_loadd(6, B, 64); _tile_loadd(7, B + 512, 64);
      PRODUCTS;
    }
  });
  report("2x2: loads interleaved with the products", [&] {
    for (long i = 0; i < kIters; ++i) {
      _tile_loadd(4, A, 64); _tile_loadd(6, B, 64); _tile_dpbf16ps(0, 4, 6);
      _tile_loadd(7, B + 512, 64); _tile_dpbf16ps(1, 4, 7);
      _tile_loadd(5, A + 512, 64); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    }
  });
  report("2x2: B streamed over 2 MB (L2)", [&] {
    long off = 0;
    for (long i = 0; i < kIters; ++i) {
      _tile_loadd(4, A, 64); _tile_loadd(5, A + 512, 64);
      _tile_loadd(6, B + off, 64); _tile_loadd(7, B + off + 512, 64);
      PRODUCTS;
      off = off + 1024 < (1 << 20) ? off + 1024 : 0;
    }
  });
  report("1x2 double-buffered (two C, A and B pairs)", [&] {
    for (long i = 0; i < kIters; i += 2) {
      _tile_loadd(2, A, 64); _tile_loadd(4, B, 64); _tile_loadd(5, B + 512, 64);
      _tile_dpbf16ps(0, 2, 4); _tile_dpbf16ps(1, 2, 5);
      _tile_loadd(3, A + 512, 64); _tile_loadd(6, B + 1024, 64); _tile_loadd(7, B + 1536, 64);
      _tile_dpbf16ps(0, 3, 6); _tile_dpbf16ps(1, 3, 7);
      _tile_loadd(2, A, 64); _tile_loadd(4, B, 64); _tile_loadd(5, B + 512, 64);
      _tile_dpbf16ps(0, 2, 4); _tile_dpbf16ps(1, 2, 5);
      _tile_loadd(3, A + 512, 64); _tile_loadd(6, B + 1024, 64); _tile_loadd(7, B + 1536, 64);
      _tile_dpbf16ps(0, 3, 6); _tile_dpbf16ps(1, 3, 7);
    }
  });
  float c[256];
  _tile_stored(0, c, 64);  // keep the sums live
  _tile_release();
  std::printf("(check %.0f)\n", c[0]);
  return 0;
}
