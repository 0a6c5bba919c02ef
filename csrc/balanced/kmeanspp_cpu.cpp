// k-means++ seeding on the CPU (float64), for every device: seeds are identical everywhere.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "balanced/candidates.h"

namespace resid {
namespace {

// Squared distance of a float32 row to a float64 centre, in float64: 4 interleaved partial
// sums (a fixed order the compiler can vectorise).
double sq_dist(const float* xr, const double* c, int64_t d) {
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t j = 0;
  for (; j + 4 <= d; j += 4) {
    for (int l = 0; l < 4; ++l) {
      const double t = static_cast<double>(xr[j + l]) - c[j + l];
      s[l] += t * t;
    }
  }
  for (; j < d; ++j) {
    const double t = static_cast<double>(xr[j]) - c[j];
    s[0] += t * t;
  }
  return (s[0] + s[1]) + (s[2] + s[3]);
}

}  // namespace

void kmeanspp_cpu(const float* x, int64_t p, int64_t d, int64_t k, int64_t first, const double* u, int64_t* out) {
  if (k <= 0 || p <= 0 || k > p) return;  // the caller checks 1 <= k <= p
  std::vector<double> centres(static_cast<size_t>(k * d));  // chosen centres, float64
  std::vector<double> d2(static_cast<size_t>(p));           // squared distance to the nearest centre
  std::vector<int32_t> nearest(static_cast<size_t>(p), 0);  // its index among the chosen
  std::vector<double> cc(static_cast<size_t>(k));           // new centre to each earlier one
  std::vector<uint8_t> chosen(static_cast<size_t>(p), 0);
  auto set_centre = [&](int64_t t, int64_t row) {
    out[t] = row;
    chosen[row] = 1;
    for (int64_t j = 0; j < d; ++j) centres[t * d + j] = static_cast<double>(x[row * d + j]);
  };
  set_centre(0, first);
  for (int64_t i = 0; i < p; ++i) d2[i] = sq_dist(x + i * d, centres.data(), d);
  d2[first] = 0.0;
  for (int64_t t = 1; t < k; ++t) {
    double total = 0.0;
    for (int64_t i = 0; i < p; ++i) total += d2[i];
    int64_t next = -1;
    if (total > 0.0) {
      // The first row whose running sum exceeds u * total; rows at distance 0 (the chosen
      // ones among them) add nothing, so they are never drawn.
      const double target = u[t - 1] * total;
      double run = 0.0;
      int64_t last_positive = -1;
      for (int64_t i = 0; i < p; ++i) {
        if (d2[i] <= 0.0) continue;
        last_positive = i;
        run += d2[i];
        if (run > target) {
          next = i;
          break;
        }
      }
      if (next < 0) next = last_positive;  // u * total rounded up to the total
    } else {
      // Every row coincides with a centre: the floor(u * free)-th row not yet chosen.
      const int64_t free_rows = p - t;
      int64_t r = static_cast<int64_t>(u[t - 1] * static_cast<double>(free_rows));
      if (r >= free_rows) r = free_rows - 1;
      for (int64_t i = 0; i < p; ++i) {
        if (chosen[i]) continue;
        if (r-- == 0) {
          next = i;
          break;
        }
      }
    }
    set_centre(t, next);
    const double* c = centres.data() + t * d;
    for (int64_t s = 0; s < t; ++s) {
      double acc = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        const double v = centres[s * d + j] - c[j];
        acc += v * v;
      }
      cc[s] = acc;
    }
    // Triangle inequality: with a the row's nearest centre, ||c - a||^2 >= 4 d2 implies
    // ||x - c|| >= ||c - a|| - ||x - a|| >= ||x - a||: the row keeps its distance, unread.
    for (int64_t i = 0; i < p; ++i) {
      if (cc[nearest[i]] >= 4.0 * d2[i]) continue;
      const double v = sq_dist(x + i * d, c, d);
      if (v < d2[i]) {
        d2[i] = v;
        nearest[i] = static_cast<int32_t>(t);
      }
    }
    d2[next] = 0.0;
    nearest[next] = static_cast<int32_t>(t);
  }
}

}  // namespace resid
