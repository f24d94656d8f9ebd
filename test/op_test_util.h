// op_test_util.h: what the CPU op tests share (test_ops, test_lightning, test_moe): random vectors,
// small reductions, the error measure and the finite-difference gradient check. Include after
// <doctest/doctest.h>.
//
// Error measure: per element |a - b| / max(|a|, |b|, floor_frac * max|b|, abs_floor), the maximum
// over elements (a NaN anywhere gives a failing value). Elements far below the tensor's largest are
// thus compared absolutely at the floor, where finite differences have no relative accuracy.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "llmc/rng.h"
#include "llmc/utils.h"

using Vec = std::vector<double>;
using VecF = std::vector<float>;
static const double NaN = std::numeric_limits<double>::quiet_NaN();

static inline Vec randn(llmc::Rng& rng, size_t n, double scale = 1.0) {
    Vec v(n);
    for (auto& x : v) x = scale * rng.normal();
    return v;
}
static inline VecF to_float(const Vec& v) { return VecF(v.begin(), v.end()); }
static inline double dot(const Vec& a, const Vec& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}
static inline double max_abs(const Vec& v) {
    double m = 0;
    for (double x : v) m = std::max(m, std::fabs(x));
    return m;
}
template <typename T>
static inline bool all_finite(const std::vector<T>& v) {
    for (T x : v)
        if (!std::isfinite((double)x)) return false;
    return true;
}
// the error measure above
static inline double max_rel_err(const Vec& a, const Vec& b, double floor_frac, double abs_floor = 1e-300) {
    double floor_ = std::max(floor_frac * max_abs(b), abs_floor), worst = 0;
    for (size_t i = 0; i < a.size(); i++) {
        double r = std::fabs(a[i] - b[i]) / std::max({std::fabs(a[i]), std::fabs(b[i]), floor_});
        if (!(r <= worst)) worst = r;  // also catches NaN
    }
    return worst;
}

// d loss / d x_i for every element by finite differences (x is perturbed in place and restored):
// the 5-point stencil (8 (L(x+h) - L(x-h)) - (L(x+2h) - L(x-2h))) / 12h, or with points = 2 the
// central difference (L(x+h) - L(x-h)) / 2h. loss() is called once more at the end so that the
// op's saved outputs (rstd, lse, ...) are those of the unperturbed point. The thousands of tiny
// calls run on one thread: on a loaded 2-core machine an OpenMP barrier per call can cost
// milliseconds (the analytic gradient under test is computed by the caller with every thread).
static inline Vec numeric_gradient(Vec& x, const std::function<double()>& loss, double h, int points = 5) {
    Vec numeric(x.size());
#ifdef _OPENMP
    int saved_threads = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    for (size_t i = 0; i < x.size(); i++) {
        double save = x[i];
        x[i] = save + h; double p1 = loss();
        x[i] = save - h; double m1 = loss();
        if (points == 5) {
            x[i] = save + 2 * h; double p2 = loss();
            x[i] = save - 2 * h; double m2 = loss();
            numeric[i] = (8 * (p1 - m1) - (p2 - m2)) / (12 * h);
        } else {
            numeric[i] = (p1 - m1) / (2 * h);
        }
        x[i] = save;
    }
    loss();
#ifdef _OPENMP
    omp_set_num_threads(saved_threads);
#endif
    return numeric;
}

// The analytic gradient against the 5-point stencil with step h: max rel err (floor 1e-3 of the
// largest, 1e-9 absolute) must be <= 1e-6. Returns the error (also printed).
static inline double gradcheck(const std::string& what, Vec& x, const Vec& analytic, const std::function<double()>& loss,
                               double h = 1e-3) {
    REQUIRE(analytic.size() == x.size());
    Vec numeric = numeric_gradient(x, loss, h);
    double err = max_rel_err(analytic, numeric, 1e-3, 1e-9);
    std::string msg = llmc::strfmt("%s: max rel err %.3g over %zu elements (max |grad| %.3g)", what.c_str(), err, x.size(), max_abs(numeric));
    INFO(msg);
    CHECK(err <= 1e-6);
    MESSAGE(msg);
    return err;
}
