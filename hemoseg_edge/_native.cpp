// Native CPU kernels for the hot loops of hemoseg_edge.preprocess / .postprocess.
//
// Each function reproduces, bit for bit, a computation whose reference lives elsewhere:
//   hs_area_resample preprocess.area_resample on a uint8 plane   (taps computed in Python)
//   hs_back_map_ge_windows
//                    preprocess.back_map(...) >= threshold inside the FOV disc's row spans,
//                    for every lesion window in one call      (postprocess.threshold_windows)
//   hs_components    8-connected components with area, bounding box and coordinate sums, as
//                    cv2.connectedComponentsWithStats gives them  (postprocess.find_lesions)
// Bit equality rests on doing the same IEEE float32 operations in the same order: build with
// -ffp-contract=off (no fused multiply-add) and without -ffast-math. tests/test_native.py
// compares every function with its reference on real IDRiD frames and random inputs.
//
// Loaded with ctypes (hemoseg_edge/native.py); plain C ABI, no Python API. All pointers are
// caller-owned; nothing is allocated across calls.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>


namespace {

// One axis of preprocess._bilinear_taps, same float64 arithmetic: for pixels start..stop-1,
// u = (X + 0.5 - box0) / scale - 0.5; samples floor(u) + 1 and + 2 of the padded map (clipped
// to 0..n+1), weights float32(1 - frac) and float32(frac).
void bilinear_taps(int start, int stop, double box0, double scale, int n, std::vector<int>& i0,
                   std::vector<int>& i1, std::vector<float>& w0, std::vector<float>& w1) {
    const int len = stop - start;
    i0.resize(len);
    i1.resize(len);
    w0.resize(len);
    w1.resize(len);
    for (int k = 0; k < len; k++) {
        double u = (static_cast<double>(start + k) + 0.5 - box0) / scale - 0.5;
        double lo = std::floor(u);
        double frac = u - lo;
        int64_t l = static_cast<int64_t>(lo);
        i0[k] = static_cast<int>(std::min<int64_t>(std::max<int64_t>(l + 1, 0), n + 1));
        i1[k] = static_cast<int>(std::min<int64_t>(std::max<int64_t>(l + 2, 0), n + 1));
        w0[k] = static_cast<float>(1.0 - frac);
        w1[k] = static_cast<float>(frac);
    }
}

}  // namespace

extern "C" {

// preprocess.area_resample for a uint8 band (the plane under the box: pixel stride `pix`
// bytes, row stride `stride`, nx columns). Taps: rows (iy, wy: h x ky), columns (ix, wx:
// w x kx), offsets into the band. out: h x w float32.
int hs_area_resample(const uint8_t* band_u8, int64_t stride, int64_t pix, int nx,
                     const int64_t* iy, const float* wy, int ky, const int64_t* ix,
                     const float* wx, int kx, int h, int w, float* out) {
    // the band as contiguous float rows (numpy's band.astype(float32)), converted once
    int64_t ny = 0;
    for (int64_t t = 0; t < static_cast<int64_t>(h) * ky; t++) ny = std::max(ny, iy[t] + 1);
    std::unique_ptr<float[]> band(new float[static_cast<size_t>(ny) * nx]);
    for (int64_t r = 0; r < ny; r++) {
        const uint8_t* s = band_u8 + r * stride;
        float* b = band.get() + r * nx;
        for (int c = 0; c < nx; c++) b[c] = static_cast<float>(s[c * pix]);
    }
    // column taps transposed (tap k of every output column contiguous), so that the column
    // sums run over i in vector registers, still in tap order
    std::vector<int> cidx(static_cast<size_t>(kx) * w);
    std::vector<float> cw(static_cast<size_t>(kx) * w), rows(static_cast<size_t>(nx)), g(w);
    for (int i = 0; i < w; i++) {
        for (int k = 0; k < kx; k++) {
            const size_t to = static_cast<size_t>(k) * w + i;
            const int64_t from = static_cast<int64_t>(i) * kx + k;
            cidx[to] = static_cast<int>(ix[from]);
            cw[to] = wx[from];
        }
    }
    for (int j = 0; j < h; j++) {
        const int64_t* rj = iy + static_cast<int64_t>(j) * ky;
        const float* wj = wy + static_cast<int64_t>(j) * ky;
        {  // rows: rows[c] = sum_k band[iy[j,k], c] * wy[j,k], in k order
            const float* s = band.get() + rj[0] * nx;
            const float a = wj[0];
            for (int c = 0; c < nx; c++) rows[c] = s[c] * a;
        }
        for (int k = 1; k < ky; k++) {
            const float* s = band.get() + rj[k] * nx;
            const float a = wj[k];
            for (int c = 0; c < nx; c++) rows[c] += s[c] * a;
        }
        float* o = out + static_cast<int64_t>(j) * w;
        for (int k = 0; k < kx; k++) {  // columns: o[i] = sum_k rows[ix[i,k]] * wx[i,k]
            const int* ck = cidx.data() + static_cast<size_t>(k) * w;
            const float* wk = cw.data() + static_cast<size_t>(k) * w;
            for (int i = 0; i < w; i++) g[i] = rows[ck[i]];
            if (k == 0) {
                for (int i = 0; i < w; i++) o[i] = g[i] * wk[i];
            } else {
                for (int i = 0; i < w; i++) o[i] += g[i] * wk[i];
            }
        }
    }
    return 0;
}

// preprocess.back_map on a window (x0, y0, x1, y1), thresholded and limited to one span of
// columns per row: out[y, x] = value >= thr and span_lo[y] <= x0 + x < span_hi[y] (the FOV
// disc inside the crop box). padded: (h + 2) x (w + 2) float32, the model map with a zero
// border; box: the crop box in original pixels (Geometry.box). out: bool/uint8 rows of
// `out_stride` bytes, the window of the full mask. Scratch: the model rows the window needs.
static int hs_back_map_ge(const float* padded, int h, int w, double bx0, double by0,
                          double bx1, double by1, int x0, int y0, int x1, int y1, float thr,
                          const int64_t* span_lo, const int64_t* span_hi, uint8_t* out,
                          int64_t out_stride) {
    const int ww = x1 - x0, wh = y1 - y0;
    if (ww <= 0 || wh <= 0) return 0;
    std::vector<int> c0, c1, r0, r1;
    std::vector<float> cw0, cw1, rw0, rw1;
    bilinear_taps(x0, x1, bx0, (bx1 - bx0) / w, w, c0, c1, cw0, cw1);
    bilinear_taps(y0, y1, by0, (by1 - by0) / h, h, r0, r1, rw0, rw1);
    const int pw = w + 2;
    const int lo = *std::min_element(r0.begin(), r0.end());
    const int hi = *std::max_element(r1.begin(), r1.end());
    const int n = hi - lo + 1;
    std::vector<float> c(static_cast<size_t>(n) * ww);
    for (int rr = 0; rr < n; rr++) {  // columns first, on the model rows needed
        const float* p = padded + static_cast<int64_t>(lo + rr) * pw;
        float* cr = c.data() + static_cast<int64_t>(rr) * ww;
        for (int x = 0; x < ww; x++) {
            float v = p[c0[x]] * cw0[x];
            v += p[c1[x]] * cw1[x];
            cr[x] = v;
        }
    }
    for (int y = 0; y < wh; y++) {  // then rows and the threshold, inside the span
        uint8_t* o = out + y * out_stride;
        const int a0 = static_cast<int>(std::max<int64_t>(span_lo[y] - x0, 0));
        const int a1 = static_cast<int>(std::min<int64_t>(span_hi[y] - x0, ww));
        std::fill(o, o + ww, uint8_t{0});
        if (a0 >= a1) continue;
        const float* a = c.data() + static_cast<int64_t>(r0[y] - lo) * ww;
        const float* b = c.data() + static_cast<int64_t>(r1[y] - lo) * ww;
        const float wa = rw0[y], wb = rw1[y];
        for (int x = a0; x < a1; x++) {
            float v = a[x] * wa;
            v += b[x] * wb;
            o[x] = static_cast<uint8_t>(v >= thr);
        }
    }
    return 0;
}

// hs_back_map_ge for n windows at once (win[4k .. 4k+3] = x0, y0, x1, y1): window k's rows go
// to out + offset[k] with its width as the stride; the spans are given for rows span_y0 .. on
// (span_lo[y - span_y0]), covering every window's rows.
int hs_back_map_ge_windows(const float* padded, int h, int w, double bx0, double by0,
                           double bx1, double by1, int n, const int32_t* win, float thr,
                           const int64_t* span_lo, const int64_t* span_hi, int span_y0,
                           uint8_t* out, const int64_t* offset) {
    for (int k = 0; k < n; k++) {
        const int32_t* b = win + 4 * k;
        hs_back_map_ge(padded, h, w, bx0, by0, bx1, by1, b[0], b[1], b[2], b[3], thr,
                       span_lo + (b[1] - span_y0), span_hi + (b[1] - span_y0), out + offset[k],
                       b[2] - b[0]);
    }
    return 0;
}

// 8-connected components of a binary window (non-zero = foreground), in no particular order.
// For component k, stats[k * 7 + ...] = area, x0, y0, x1 (inclusive), y1 (inclusive), sum of x,
// sum of y (window coordinates). Returns the number of components, or -1 when it exceeds
// `capacity` (the caller retries with more; ceil(h/2) * ceil(w/2) always suffices).
// Run-length union-find: memory and time follow the foreground runs, not the window's area
// (zero bytes are skipped 8 at a time).
int hs_components(const uint8_t* mask, int64_t stride, int h, int w, int64_t* stats,
                  int capacity) {
    struct Run {
        int y, x0, x1;  // x1 exclusive
    };
    std::vector<Run> runs;
    std::vector<int32_t> parent;
    auto find = [&](int32_t a) {
        while (parent[a] != a) {
            parent[a] = parent[parent[a]];
            a = parent[a];
        }
        return a;
    };
    size_t prev_begin = 0, prev_end = 0;  // the previous row's runs
    for (int y = 0; y < h; y++) {
        const uint8_t* m = mask + y * stride;
        const size_t begin = runs.size();
        int x = 0;
        while (x < w) {
            while (x + 8 <= w) {  // skip zero bytes a word at a time
                uint64_t word;
                std::memcpy(&word, m + x, 8);
                if (word) break;
                x += 8;
            }
            while (x < w && !m[x]) x++;
            if (x >= w) break;
            const int x0 = x;
            while (x < w && m[x]) x++;
            runs.push_back({y, x0, x});
            parent.push_back(static_cast<int32_t>(parent.size()));
        }
        size_t k = prev_begin;  // union with the previous row's runs that touch (8-connected)
        for (size_t r = begin; r < runs.size(); r++) {
            while (k < prev_end && runs[k].x1 < runs[r].x0) k++;  // ends left of x0 - 1
            for (size_t q = k; q < prev_end && runs[q].x0 <= runs[r].x1; q++) {
                int32_t a = find(static_cast<int32_t>(r)), b = find(static_cast<int32_t>(q));
                if (a != b) parent[std::max(a, b)] = std::min(a, b);
            }
        }
        prev_begin = begin;
        prev_end = runs.size();
    }
    std::vector<int32_t> index(runs.size(), -1);  // root -> component number
    int n = 0;
    for (size_t r = 0; r < runs.size(); r++) {
        const int32_t root = find(static_cast<int32_t>(r));
        if (index[root] < 0) {
            if (n >= capacity) return -1;
            index[root] = n;
            int64_t* s = stats + static_cast<int64_t>(n) * 7;
            s[0] = 0, s[1] = w, s[2] = h, s[3] = -1, s[4] = -1, s[5] = 0, s[6] = 0;
            n++;
        }
        const Run& run = runs[r];
        int64_t* s = stats + static_cast<int64_t>(index[root]) * 7;
        const int64_t len = run.x1 - run.x0;
        s[0] += len;
        s[1] = std::min<int64_t>(s[1], run.x0);
        s[2] = std::min<int64_t>(s[2], run.y);
        s[3] = std::max<int64_t>(s[3], run.x1 - 1);
        s[4] = std::max<int64_t>(s[4], run.y);
        s[5] += len * (run.x0 + run.x1 - 1) / 2;  // x0 + ... + (x1 - 1)
        s[6] += len * run.y;
    }
    return n;
}

}  // extern "C"
