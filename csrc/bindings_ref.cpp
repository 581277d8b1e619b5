// bindings_ref.cpp: the reference kernels exposed one by one (pyqwen._core.testing.ref_*), so that tests
// can hold the SIMD and CUDA versions (and numpy/torch re-derivations) against the spec directly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <tuple>
#include <vector>

#include "attention.h"
#include "gdn.h"
#include "gdn_chunk.h"
#include "simd/dispatch.h"
#include "threadpool.h"
#include "tensor.h"
#include "model.h"
#include "matmul.h"
#include "ops.h"
#include "rope_scaling.h"

namespace py = pybind11;

namespace pq {

using farr = py::array_t<float, py::array::c_style | py::array::forcecast>;
using barr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

static void need(bool ok, const char* msg) {
    if (!ok) throw std::invalid_argument(msg);
}

// (n, dk, dv) of one head's delta-rule arguments: q, k [n, dk]; v [n, dv]; g, beta [n]; state [dv, dk].
static std::tuple<int64_t, int64_t, int64_t> delta_rule_dims(const farr& q, const farr& k, const farr& v, const farr& g,
                                                      const farr& beta, const farr& state) {
    need(q.ndim() == 2 && k.ndim() == 2 && v.ndim() == 2 && state.ndim() == 2, "bad ranks");
    const int64_t n = q.shape(0), dk = q.shape(1), dv = v.shape(1);
    need(k.shape(0) == n && k.shape(1) == dk && v.shape(0) == n, "q/k/v shapes disagree");
    need(g.size() == n && beta.size() == n, "g and beta must have n values");
    need(state.shape(0) == dv && state.shape(1) == dk, "state must be [dv, dk]");
    return {n, dk, dv};
}

using harr = py::array_t<uint16_t, py::array::c_style | py::array::forcecast>;

void bind_ref(py::module_& m) {
    m.def(
        "float_matmul",
        [](harr w, farr x, bool bf16, int n_threads) {
            // The model's matmul on F16/BF16 weights (the active kernel set, pyqwen._core.set_simd).
            need(w.ndim() == 2 && x.ndim() == 2 && w.shape(1) == x.shape(1), "w [N, K], x [T, K]");
            need(w.shape(0) > 0 && w.shape(1) > 0 && n_threads >= 1 && n_threads <= 64, "bad sizes");
            const int64_t N = w.shape(0), K = w.shape(1), T = x.shape(0);
            farr y({T, N});
            py::gil_scoped_release nogil;
            ThreadPool pool(n_threads);
            Tensor W;
            W.type = bf16 ? T_BF16 : T_F16;
            W.ne0 = K;
            W.ne1 = N;
            W.data = (const uint8_t*)w.data();
            if (T > 0) matmul(pool, W, x.data(), T, y.mutable_data());
            return y;
        },
        py::arg("w"), py::arg("x"), py::arg("bf16") = false, py::arg("n_threads") = 1,
        "y [T, N] = x [T, K] @ W^T through matmul (the decode and verify path).");
    m.def(
        "float_rows_kernel", []() { return simd_kernels().rows_f16 != nullptr && simd_kernels().rows_bf16 != nullptr; },
        "Whether the active kernel set's matmul takes F16/BF16 weights through a several-row kernel (rows_*).");
    m.def(
        "float_dots_one",
        [](harr w, farr x, bool bf16) {
            // Every (row, token) through the active set's one-token dot: what decoding one token computes.
            need(w.ndim() == 2 && x.ndim() == 2 && w.shape(1) == x.shape(1), "w [N, K], x [T, K]");
            const int64_t N = w.shape(0), K = w.shape(1), T = x.shape(0);
            farr y({T, N});
            const SimdKernels& sk = simd_kernels();
            for (int64_t t = 0; t < T; ++t)
                for (int64_t r = 0; r < N; ++r)
                    y.mutable_data()[t * N + r] =
                        (bf16 ? sk.dot_bf16 : sk.dot_f16)(w.data() + r * K, x.data() + t * K, K);
            return y;
        },
        py::arg("w"), py::arg("x"), py::arg("bf16") = false,
        "y [T, N]: each (row, token) by the active kernel set's one-token dot.");
    m.def(
        "ref_rms_norm",
        [](farr x, py::object w, float eps) {
            need(x.ndim() == 2, "x must be [rows, n]");
            const int64_t rows = x.shape(0), n = x.shape(1);
            farr out({rows, n});
            farr wa;
            const float* wp = nullptr;
            if (!w.is_none()) {
                wa = w.cast<farr>();
                need(wa.ndim() == 1 && wa.shape(0) == n, "w must be [n]");
                wp = wa.data();
            }
            for (int64_t r = 0; r < rows; ++r) rms_norm(x.data() + r * n, wp, out.mutable_data() + r * n, n, eps);
            return out;
        },
        py::arg("x"), py::arg("w"), py::arg("eps"));

    m.def(
        "ref_matmul",
        [](int type, barr data, int64_t ne0, int64_t ne1, farr x, int n_threads) {
            need(type_supported(type), "unsupported weight type");
            need(ne0 > 0 && ne1 > 0 && ne0 % type_block_size(type) == 0, "bad weight shape for its type");
            need((size_t)data.size() == row_bytes(type, ne0) * (size_t)ne1, "weight byte size does not match shape");
            need(x.ndim() == 2 && x.shape(1) == ne0, "x must be [n_tok, ne0]");
            Tensor W;
            W.type = type;
            W.ne0 = ne0;
            W.ne1 = ne1;
            W.data = data.data();
            const int64_t n_tok = x.shape(0);
            farr y({n_tok, ne1});
            float* yp = y.mutable_data();
            const float* xp = x.data();
            {
                py::gil_scoped_release release;
                ThreadPool pool(n_threads);
                matmul(pool, W, xp, n_tok, yp);
            }
            return y;
        },
        py::arg("type"), py::arg("data"), py::arg("ne0"), py::arg("ne1"), py::arg("x"), py::arg("n_threads") = 1,
        "y[t] = W x[t] for weight rows stored in a GGUF type (the forward pass's matmul).");

    m.def(
        "ref_conv1d_silu",
        [](farr x, farr w, farr state) {
            need(x.ndim() == 2 && w.ndim() == 2 && state.ndim() == 2, "x [n,C], w [C,K], state [C,K-1]");
            const int64_t n = x.shape(0), C = x.shape(1), K = w.shape(1);
            need(w.shape(0) == C && state.shape(0) == C && state.shape(1) == K - 1 && K >= 1, "shape mismatch");
            farr y({n, C});
            farr st({C, K - 1});
            std::copy(state.data(), state.data() + C * (K - 1), st.mutable_data());
            simd_kernels().conv1d_silu(x.data(), w.data(), st.mutable_data(), y.mutable_data(), C, K, n, 0, C);
            return py::make_tuple(y, st);
        },
        py::arg("x"), py::arg("w"), py::arg("state"),
        "Causal conv + SiLU (the selected kernel set: set_simd); returns (y, new_state).");

    m.def(
        "ref_delta_rule",
        [](farr q, farr k, farr v, farr g, farr beta, farr state, float q_scale) {
            // q, k: [n, dk]; v: [n, dv]; g, beta: [n]; state: [dv, dk] (transposed); one head.
            const auto [n, dk, dv] = delta_rule_dims(q, k, v, g, beta, state);
            farr o({n, dv});
            farr S({dv, dk});
            std::copy(state.data(), state.data() + dv * dk, S.mutable_data());
            simd_kernels().delta_rule(q.data(), k.data(), v.data(), dk, dk, dv, g.data(), beta.data(), 1,
                                      S.mutable_data(), dk, dv, n, q_scale, o.mutable_data(), dv);
            return py::make_tuple(o, S);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("g"), py::arg("beta"), py::arg("state"),
        py::arg("q_scale"), "Gated delta rule for one head (the selected kernel set: set_simd); returns (o [n, dv], "
        "state [dv, dk]).");

    m.def(
        "ref_delta_rule_chunked",
        [](farr q, farr k, farr v, farr g, farr beta, farr state, float q_scale, int64_t chunk) {
            // as ref_delta_rule, in the chunked form (gdn_chunk.h; with set_simd("ref"): gdn.h's reference)
            const auto [n, dk, dv] = delta_rule_dims(q, k, v, g, beta, state);
            need(n >= 1 && dk >= 1 && dv >= 1, "need n, dk, dv >= 1");
            farr o({n, dv});
            farr S({dv, dk});
            std::copy(state.data(), state.data() + dv * dk, S.mutable_data());
            {
                py::gil_scoped_release release;
                delta_rule_chunked(q.data(), k.data(), v.data(), dk, dk, dv, g.data(), beta.data(), 1,
                                   S.mutable_data(), dk, dv, n, q_scale, o.mutable_data(), dv, chunk);
            }
            return py::make_tuple(o, S);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("g"), py::arg("beta"), py::arg("state"),
        py::arg("q_scale"), py::arg("chunk") = kGdnChunkCpu,
        "Gated delta rule for one head in the chunked WY/UT form (the selected kernel set); returns (o, state).");

    m.def(
        "ref_gdn_gemm",
        [](farr a, farr b, farr c, float c_scale) {
            need(a.ndim() == 2 && b.ndim() == 2 && c.ndim() == 2, "a [M,K], b [K,N], c [M,N]");
            const int64_t M = a.shape(0), K = a.shape(1), N = b.shape(1);
            need(b.shape(0) == K && c.shape(0) == M && c.shape(1) == N, "shape mismatch");
            farr y({M, N});
            std::copy(c.data(), c.data() + M * N, y.mutable_data());
            gdn_gemm()(M, N, K, a.data(), K, b.data(), N, y.mutable_data(), N, c_scale);
            return y;
        },
        py::arg("a"), py::arg("b"), py::arg("c"), py::arg("c_scale"),
        "c_scale c + a b (c unread when c_scale is 0) with the chunked delta rule's product of the selected kernel set.");

    m.def(
        "ref_rope_neox",
        [](farr x, int n_rot, py::array_t<int64_t, py::array::c_style | py::array::forcecast> pos, float base) {
            need(x.ndim() == 2 && pos.ndim() == 1 && pos.shape(0) == x.shape(0), "x [n, D], pos [n]");
            need(n_rot >= 0 && n_rot % 2 == 0 && n_rot <= x.shape(1), "bad n_rot");
            farr y({x.shape(0), x.shape(1)});
            std::copy(x.data(), x.data() + x.size(), y.mutable_data());
            Config c;  // unscaled RoPE of this base: the model's frequency table (rope_scaling.h)
            c.n_rot = n_rot;
            c.rope_base = base;
            std::vector<double> f(n_rot / 2);
            for (int i = 0; i < n_rot / 2; ++i) f[i] = rope_pair_freq(c, i);
            for (int64_t r = 0; r < x.shape(0); ++r)
                rope_neox(y.mutable_data() + r * x.shape(1), n_rot, pos.data()[r], f.data(), rope_mscale(c));
            return y;
        },
        py::arg("x"), py::arg("n_rot"), py::arg("pos"), py::arg("base"));

    m.def(
        "ref_attention",
        [](farr q, py::array k_cache, py::array v_cache, int64_t pos0) {
            // q: [n, H, D] (normed + roped); caches: [n_keys_total, Hkv, D] float32 or float16, holding
            // the keys of positions 0..pos0+n-1. Query t attends to keys 0..pos0+t (causal), query head h
            // to KV head h / (H / Hkv). Returns o [n, H, D] (before the output gate).
            need(q.ndim() == 3 && k_cache.ndim() == 3 && v_cache.ndim() == 3, "q [n,H,D], caches [m,Hkv,D]");
            const int64_t n = q.shape(0), H = q.shape(1), D = q.shape(2);
            const int64_t m = k_cache.shape(0), Hkv = k_cache.shape(1);
            need(k_cache.shape(2) == D && v_cache.shape(0) == m && v_cache.shape(1) == Hkv && v_cache.shape(2) == D,
                 "cache shapes disagree");
            need(Hkv > 0 && H % Hkv == 0, "H must be a multiple of Hkv");
            need(pos0 >= 0 && pos0 + n <= m, "cache too short for pos0 + n");
            const bool f16 = k_cache.dtype().is(py::dtype::of<uint16_t>()) || k_cache.dtype().kind() == 'f' && k_cache.itemsize() == 2;
            need(k_cache.dtype().is(v_cache.dtype()), "caches must share a dtype");
            need(f16 || (k_cache.dtype().kind() == 'f' && k_cache.itemsize() == 4), "caches must be float32 or float16");
            auto kc = py::array::ensure(k_cache, py::array::c_style), vc = py::array::ensure(v_cache, py::array::c_style);
            const int kt = f16 ? T_F16 : T_F32;
            const size_t row = (size_t)Hkv * D * (f16 ? 2 : 4), head = (size_t)D * (f16 ? 2 : 4);
            farr o({n, H, D});
            std::vector<float> p(pos0 + n);
            const uint8_t* K = (const uint8_t*)kc.data();
            const uint8_t* V = (const uint8_t*)vc.data();
            for (int64_t t = 0; t < n; ++t)
                for (int64_t h = 0; h < H; ++h) {
                    const int64_t g = h / (H / Hkv);
                    attention_head(q.data() + (t * H + h) * D, K + g * head, row, kt, V + g * head, row, kt, pos0 + t + 1,
                                   D, 1.0f / std::sqrt((float)D), p.data(), o.mutable_data() + (t * H + h) * D);
                }
            return o;
        },
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("pos0"),
        "Causal GQA attention (scale 1/sqrt(D)) of n queries at positions pos0.. over a KV cache.");

    m.def(
        "ref_hadamard",
        [](farr x, int block) {
            need(x.ndim() == 1 && block > 0 && (block & (block - 1)) == 0 && x.shape(0) % block == 0,
                 "x [n], block a power of two dividing n");
            farr y(x.shape(0));
            std::copy(x.data(), x.data() + x.size(), y.mutable_data());
            hadamard(y.mutable_data(), x.shape(0), block);
            return y;
        },
        py::arg("x"), py::arg("block"), "The KV cache rotation: x times the orthonormal Sylvester Hadamard matrix per block.");

    m.def(
        "ref_attention_kv",
        [](farr q, py::array_t<uint8_t, py::array::c_style> k_cache, const std::string& k_type,
           py::array_t<uint8_t, py::array::c_style> v_cache, const std::string& v_type, int64_t n_head_kv, int64_t pos0,
           bool grouped) {
            // The model's attention over caches stored in any KV type: rows of n_head_kv heads as raw bytes
            // [m, row_bytes] (k_type/v_type: f32, f16, q8_0, q4_0; a quantized head is whole 32-value blocks).
            need(q.ndim() == 3 && k_cache.ndim() == 2 && v_cache.ndim() == 2, "q [n,H,D], caches [m, row_bytes]");
            const int64_t n = q.shape(0), H = q.shape(1), D = q.shape(2), m = k_cache.shape(0);
            need(n_head_kv > 0 && H % n_head_kv == 0, "H must be a multiple of n_head_kv");
            const KvTypes t = kv_types_from_name(k_type + "," + v_type);
            Config c;
            c.n_head_kv = (int)n_head_kv;
            c.head_dim = (int)D;
            check_kv_types(c, t);
            const size_t kr = kv_row_bytes(c, t.k), vr = kv_row_bytes(c, t.v);
            need((size_t)k_cache.shape(1) == kr && (size_t)v_cache.shape(1) == vr && v_cache.shape(0) == m,
                 "cache rows have the wrong size for their type");
            need(pos0 >= 0 && pos0 + n <= m, "cache too short for pos0 + n");
            farr o({n, H, D});
            const int64_t group = H / n_head_kv;
            const float scale = 1.0f / std::sqrt((float)D);
            if (!grouped) {  // attention_head: one query row at a time (the reference)
                std::vector<float> p(pos0 + n);
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t h = 0; h < H; ++h) {
                        const int64_t g = h / group;
                        attention_head(q.data() + (i * H + h) * D, k_cache.data() + g * (kr / n_head_kv), kr, t.k,
                                       v_cache.data() + g * (vr / n_head_kv), vr, t.v, pos0 + i + 1, D, scale,
                                       p.data(), o.mutable_data() + (i * H + h) * D);
                    }
                return o;
            }
            // attention_rows: per KV head, all n x group rows at once (the model's kernel); q rows of one
            // head group are group * D apart within a token, H * D across tokens: gather them.
            std::vector<float> qb(n * group * D), ob(n * group * D), S(n * group * (pos0 + n));
            std::vector<int64_t> n_keys(n * group);
            for (int64_t g = 0; g < n_head_kv; ++g) {
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t j = 0; j < group; ++j) {
                        std::copy_n(q.data() + (i * H + g * group + j) * D, D, qb.data() + (i * group + j) * D);
                        n_keys[i * group + j] = pos0 + i + 1;
                    }
                attention_rows(qb.data(), D, n * group, n_keys.data(), k_cache.data() + g * (kr / n_head_kv), kr, t.k,
                               v_cache.data() + g * (vr / n_head_kv), vr, t.v, D, scale, S.data(), ob.data(), D);
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t j = 0; j < group; ++j)
                        std::copy_n(ob.data() + (i * group + j) * D, D, o.mutable_data() + (i * H + g * group + j) * D);
            }
            return o;
        },
        py::arg("q"), py::arg("k_cache"), py::arg("k_type"), py::arg("v_cache"), py::arg("v_type"),
        py::arg("n_head_kv"), py::arg("pos0"), py::arg("grouped") = false,
        "Causal GQA attention over caches stored as raw rows in any KV type: attention_head per query row "
        "(grouped=False, the reference) or attention_rows per KV head (grouped=True, what the model runs).");
}

}  // namespace pq
