// bind_attention.cpp: numpy-level entry points of the attention kernels (ops_attention.h), for tests
// (registered in the `testing` submodule, see bindings.cpp).
// Each call copies its inputs to the device, runs, synchronises and copies the results back.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../host_api.h"
#include "../ops_attention.h"
#include "../rope_table.h"
#include "device_buffer.h"
#include "model_spec.h"  // kv_types_from_name

namespace py = pybind11;

namespace pq::cuda_bind {

namespace {

struct Heads {
    int64_t n;
    int H, Hkv, D;
};

Heads heads_of(const F32Array& qg, const F32Array& k, const F32Array& v) {
    if (qg.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3) throw std::invalid_argument("qg [n,H,2D], k and v [n,Hkv,D]");
    Heads h{qg.shape(0), (int)qg.shape(1), (int)k.shape(1), (int)k.shape(2)};
    if (qg.shape(2) != 2 * h.D || k.shape(0) != h.n || v.shape(0) != h.n || v.shape(1) != h.Hkv || v.shape(2) != h.D)
        throw std::invalid_argument("qg [n,H,2D], k and v [n,Hkv,D] disagree");
    return h;
}

void need_vec(const F32Array& w, int D, const char* name) {
    if (w.ndim() != 1 || w.shape(0) != D) throw std::invalid_argument(std::string(name) + " must hold D floats");
}

// The rotary table: rope_freqs (n_rot/2 float64 frequencies, e.g. YaRN's) with mscale, else base^(-2i/n_rot).
pq::cuda::RopeFreqs rope_of(int n_rot, float rope_base, const py::object& freqs, float mscale) {
    if (freqs.is_none()) {
        if (mscale != 1.0f) throw std::invalid_argument("mscale needs rope_freqs");
        return pq::cuda::rope_freqs_unscaled(n_rot, rope_base);
    }
    auto f = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(freqs);
    if (!f || f.ndim() != 1 || f.shape(0) != n_rot / 2) throw std::invalid_argument("rope_freqs must hold n_rot/2 values");
    const double* fp = f.data();
    return pq::cuda::rope_freqs_from(n_rot, mscale, [&](int i) { return fp[i]; });
}

// One cache argument: float16 [n_ctx, Hkv, D] for f16, uint8 [n_ctx, Hkv * D/32 * block bytes] (the
// rows' raw ggml blocks) for q8_0 / q4_0.
py::array cache_arg(const py::array& a, int type, const Heads& h, const char* name) {
    if (type == pq::T_F16) {
        F16Bits b = f16_bits(a, name);
        if (b.ndim() != 3 || b.shape(1) != h.Hkv || b.shape(2) != h.D)
            throw std::invalid_argument(std::string(name) + " must be [n_ctx, Hkv, D] float16");
        return std::move(b);
    }
    if (type != pq::T_Q8_0 && type != pq::T_Q4_0) throw std::invalid_argument("kv_type: f16, q8_0 or q4_0");
    if (a.dtype().kind() != 'u' || a.itemsize() != 1 || a.ndim() != 2 ||
        a.shape(1) != (py::ssize_t)h.Hkv * (h.D / pq::type_block_size(type)) * pq::type_block_bytes(type))
        throw std::invalid_argument(std::string(name) + " must be [n_ctx, row bytes] uint8 for a quantized cache");
    return py::array::ensure(a, py::array::c_style);
}

// (qg, k) after q/k RMSNorm + RoPE, no cache append.
py::tuple attention_prepare(const F32Array& qg, const F32Array& k, const F32Array& v, const F32Array& q_norm,
                            const F32Array& k_norm, int64_t pos0, int n_rot, float rope_base, float eps,
                            const py::object& rope_freqs, float mscale) {
    const Heads h = heads_of(qg, k, v);
    need_vec(q_norm, h.D, "q_norm");
    need_vec(k_norm, h.D, "k_norm");
    auto dq = DeviceBuffer::from(qg), dk = DeviceBuffer::from(k), dv = DeviceBuffer::from(v);
    auto dqn = DeviceBuffer::from(q_norm), dkn = DeviceBuffer::from(k_norm);
    finish(pq::cuda::attention_prepare(dq.as<float>(), dk.as<float>(), dv.as<float>(), dqn.as<float>(),
                                       dkn.as<float>(), pq::cuda::KvCache{}, pos0, h.n, h.H, h.Hkv, h.D,
                                       rope_of(n_rot, rope_base, rope_freqs, mscale), eps, nullptr),
           "attention_prepare");
    F32Array qo({(py::ssize_t)h.n, (py::ssize_t)h.H, (py::ssize_t)(2 * h.D)});
    F32Array ko({(py::ssize_t)h.n, (py::ssize_t)h.Hkv, (py::ssize_t)h.D});
    dq.download(qo.mutable_data());
    dk.download(ko.mutable_data());
    return py::make_tuple(qo, ko);
}

// (out [n, H*D], qg, k, k_cache, v_cache) after the whole attention core. The scratch is allocated with
// exactly attention_scratch_bytes_ex bytes plus a canary tail that must stay untouched.
py::tuple attention(const F32Array& qg, const F32Array& k, const F32Array& v, const F32Array& q_norm,
                    const F32Array& k_norm, const py::array& k_cache, const py::array& v_cache, int64_t pos0,
                    int n_rot, float rope_base, float eps, int64_t decode_split, int64_t prefill_split,
                    bool force_prefill, const std::string& kv_type, const py::object& rope_freqs, float mscale,
                    int64_t graph_pos, bool fused_combine, bool kv_rotation) {
    const Heads h = heads_of(qg, k, v);
    need_vec(q_norm, h.D, "q_norm");
    need_vec(k_norm, h.D, "k_norm");
    const pq::KvTypes kt = pq::kv_types_from_name(kv_type);
    py::array kc = cache_arg(k_cache, kt.k, h, "k_cache"), vc = cache_arg(v_cache, kt.v, h, "v_cache");
    if (vc.shape(0) != kc.shape(0)) throw std::invalid_argument("k_cache and v_cache differ in n_ctx");
    const int64_t n_ctx = kc.shape(0);
    pq::cuda::AttentionTuning tune;
    tune.decode_split = decode_split;
    tune.prefill_split = prefill_split;
    tune.force_prefill = force_prefill;

    auto dq = DeviceBuffer::from(qg), dk = DeviceBuffer::from(k), dv = DeviceBuffer::from(v);
    auto dqn = DeviceBuffer::from(q_norm), dkn = DeviceBuffer::from(k_norm);
    auto dkc = DeviceBuffer::from(kc), dvc = DeviceBuffer::from(vc);
    DeviceBuffer dout(sizeof(float) * (size_t)(h.n * h.H * h.D));
    const size_t scratch_bytes = pq::cuda::attention_scratch_bytes_ex(h.H, h.Hkv, h.D, h.n, n_ctx, tune);
    constexpr size_t kCanary = 4096;
    DeviceBuffer scratch(scratch_bytes + kCanary);
    std::vector<uint8_t> canary(kCanary, 0xA5);
    scratch.upload(canary.data(), kCanary, scratch_bytes);
    pq::cuda::KvCache kvc;
    kvc.k = dkc.as<void>();
    kvc.v = dvc.as<void>();
    kvc.k_type = kt.k;
    kvc.v_type = kt.v;
    kvc.k_rot = kv_rotation ? pq::kv_rotation_block(kt.k, h.D, pq::kKeys) : 0;  // the model's choice
    kvc.v_rot = kv_rotation ? pq::kv_rotation_block(kt.v, h.D, pq::kValues) : 0;
    // fused_combine: the decode kernel's last split blocks combine (counters: H zeros, left zero)
    DeviceBuffer dcnt(sizeof(unsigned) * (size_t)h.H);
    const std::vector<unsigned> zeros((size_t)h.H, 0u);
    dcnt.upload(zeros.data(), sizeof(unsigned) * zeros.size());
    unsigned* cnt = fused_combine ? dcnt.as<unsigned>() : nullptr;
    if (fused_combine && graph_pos < 0) {
        need(h.n == 1 && decode_split == 0 && prefill_split == 0 && !force_prefill,
             "fused_combine: one token, default tuning");
        finish(pq::cuda::attention_decode_q8(dq.as<float>(), dk.as<float>(), dv.as<float>(), dqn.as<float>(),
                                             dkn.as<float>(), kvc, n_ctx, pos0, h.H, h.Hkv, h.D,
                                             rope_of(n_rot, rope_base, rope_freqs, mscale), eps, dout.as<float>(),
                                             nullptr, nullptr, scratch.as<void>(), nullptr, cnt),
               "attention_decode_q8");
    } else if (graph_pos >= 0) {
        // attention_decode_graph as a recorded decode graph replays it: the launch made for position
        // graph_pos (its bucket's grid), the kernels reading pos0 from device memory
        need(h.n == 1 && decode_split == 0 && prefill_split == 0 && !force_prefill,
             "graph_pos: one token, default tuning");
        need(pos0 < n_ctx && graph_pos < n_ctx &&
                 pq::cuda::decode_bucket(graph_pos + 1, n_ctx) == pq::cuda::decode_bucket(pos0 + 1, n_ctx),
             "graph_pos and pos0 must be in one decode bucket");
        const int32_t p32 = (int32_t)pos0;
        DeviceBuffer dpos(sizeof(int32_t));
        dpos.upload(&p32, sizeof p32, 0);
        finish(pq::cuda::attention_decode_graph(dq.as<float>(), dk.as<float>(), dv.as<float>(), dqn.as<float>(),
                                                dkn.as<float>(), kvc, n_ctx, graph_pos, dpos.as<int32_t>(), h.H,
                                                h.Hkv, h.D, rope_of(n_rot, rope_base, rope_freqs, mscale), eps,
                                                dout.as<float>(), nullptr, nullptr, scratch.as<void>(), nullptr, cnt),
               "attention_decode_graph");
    } else {
        finish(pq::cuda::attention_ex(dq.as<float>(), dk.as<float>(), dv.as<float>(), dqn.as<float>(),
                                      dkn.as<float>(), kvc, n_ctx, pos0, h.n, h.H, h.Hkv, h.D,
                                      rope_of(n_rot, rope_base, rope_freqs, mscale), eps, dout.as<float>(),
                                      scratch.as<void>(), nullptr, tune),
               "attention");
    }
    if (fused_combine) {
        std::vector<unsigned> left((size_t)h.H);
        dcnt.download(left.data(), sizeof(unsigned) * left.size());
        for (unsigned c : left)
            if (c != 0) throw std::runtime_error("the decode kernel left a combine counter nonzero");
    }
    std::vector<uint8_t> tail(kCanary);
    scratch.download(tail.data(), kCanary, scratch_bytes);
    for (uint8_t b : tail)
        if (b != 0xA5) throw std::runtime_error("attention wrote past attention_scratch_bytes");

    F32Array out({(py::ssize_t)h.n, (py::ssize_t)(h.H * h.D)});
    F32Array qo({(py::ssize_t)h.n, (py::ssize_t)h.H, (py::ssize_t)(2 * h.D)});
    F32Array ko({(py::ssize_t)h.n, (py::ssize_t)h.Hkv, (py::ssize_t)h.D});
    py::array kco(kc.dtype(), kc.request().shape), vco(vc.dtype(), vc.request().shape);
    dout.download(out.mutable_data());
    dq.download(qo.mutable_data());
    dk.download(ko.mutable_data());
    dkc.download(kco.mutable_data());
    dvc.download(vco.mutable_data());
    auto back = [](const py::array& a, int type) { return type == pq::T_F16 ? as_f16(a) : a; };
    return py::make_tuple(out, qo, ko, back(kco, kt.k), back(vco, kt.v));
}

// x [rows, D] rotated by hadamard_probe (kernels/hadamard.cuh): warp=False one block of D threads per row,
// warp=True one warp per row.
F32Array hadamard(const F32Array& x, int block, bool warp) {
    need(x.ndim() == 2 && x.shape(1) >= 2 && x.shape(1) <= 256 && x.shape(0) <= 65535,
         "x must be [rows <= 65535, D <= 256] float32");
    const int D = (int)x.shape(1);
    need(block >= 2 && (block & (block - 1)) == 0 && D % block == 0, "block: a power of two >= 2 dividing D");
    auto dx = DeviceBuffer::from(x);
    finish(pq::cuda::hadamard_probe(dx.as<float>(), x.shape(0), D, block, warp, nullptr), "hadamard_probe");
    F32Array y({x.shape(0), x.shape(1)});
    dx.download(y.mutable_data());
    return y;
}

// out [32, 8] uint32 of tile_load_probe: per lane its ldmatrix.x4 and ldmatrix.x4.trans registers.
py::array tile_load_probe(const py::array& tile, const I32Array& offsets, bool skip_wait) {
    F16Bits t = f16_bits(tile, "tile");
    need(t.ndim() == 2 && t.shape(0) == 16, "tile must be [16, ld] float16");
    need(offsets.ndim() == 1 && offsets.shape(0) == 32, "offsets must hold 32 lane offsets");
    const int ld = (int)t.shape(1);
    need(ld >= 16 && ld <= 64 && ld % 8 == 0, "tile rows must hold 16..64 halves, a multiple of 8");
    for (int i = 0; i < 32; ++i) {
        const int o = offsets.data()[i];
        // ldmatrix reads 8 halves from each row address, 16-byte aligned, inside the tile
        need(o >= 0 && o % 8 == 0 && o + 8 <= 16 * ld, "offsets: multiples of 8 halves inside the tile");
    }
    auto dt = DeviceBuffer::from(t), doff = DeviceBuffer::from(offsets);
    DeviceBuffer dout(sizeof(uint32_t) * 32 * 8);
    finish(pq::cuda::tile_load_probe(dt.as<uint16_t>(), ld, doff.as<int>(), skip_wait, dout.as<uint32_t>(), nullptr),
           "tile_load_probe");
    py::array_t<uint32_t> out({32, 8});
    dout.download(out.mutable_data());
    return out;
}

}  // namespace

void bind_attention(py::module_& m) {
    m.def("attention", &attention, py::arg("qg"), py::arg("k"), py::arg("v"), py::arg("q_norm"), py::arg("k_norm"),
          py::arg("k_cache"), py::arg("v_cache"), py::arg("pos0"), py::arg("n_rot"), py::arg("rope_base"),
          py::arg("eps"), py::arg("decode_split") = 0, py::arg("prefill_split") = 0, py::arg("force_prefill") = false,
          py::arg("kv_type") = "f16", py::arg("rope_freqs") = py::none(), py::arg("mscale") = 1.0f,
          py::arg("graph_pos") = -1, py::arg("fused_combine") = false, py::arg("kv_rotation") = false,
          "Gated-attention core (ops_attention.h attention_ex): qg [n,H,2D], k/v [n,Hkv,D] float32, caches "
          "[n_ctx,Hkv,D] float16, or for kv_type q8_0 / q4_0 ('K,V' for two types) uint8 [n_ctx, row bytes] "
          "of ggml blocks. rope_freqs (n_rot/2 float64) and mscale replace base^(-2i/n_rot) and 1 (YaRN). "
          "Returns (out [n,H*D], qg, k, k_cache, v_cache) after the call. graph_pos >= 0 (one token): "
          "attention_decode_graph launched for position graph_pos with pos0 in device memory (same bucket). "
          "fused_combine (one token): the split-K combine in the decode kernel's last split blocks. "
          "kv_rotation: quantized rows Hadamard-rotated as the model stores them (model_spec.h "
          "kv_rotation_block; q rotated with k, the output rotated back before the gate).");
    m.def("hadamard", &hadamard, py::arg("x"), py::arg("block"), py::arg("warp") = false,
          "kernels/hadamard.cuh on rows x [rows, D<=256]: each row times the orthonormal Sylvester Hadamard "
          "matrix per block (warp: one warp per row, else a block of D threads).");
    m.def("attention_prepare", &attention_prepare, py::arg("qg"), py::arg("k"), py::arg("v"), py::arg("q_norm"),
          py::arg("k_norm"), py::arg("pos0"), py::arg("n_rot"), py::arg("rope_base"), py::arg("eps"),
          py::arg("rope_freqs") = py::none(), py::arg("mscale") = 1.0f,
          "q/k RMSNorm + NEOX RoPE only (no cache); returns (qg, k).");
    m.def("tile_load_probe", &tile_load_probe, py::arg("tile"), py::arg("offsets"), py::arg("skip_wait") = false,
          "cp.async + ldmatrix probe (ops_attention.h tile_load_probe): tile [16, ld] float16, offsets [32] "
          "halves; returns [32, 8] uint32: per lane ldmatrix.x4 then ldmatrix.x4.trans.");
    m.def("attention_scratch_bytes", &pq::cuda::attention_scratch_bytes, py::arg("H"), py::arg("Hkv"), py::arg("D"),
          py::arg("n"), py::arg("n_ctx"));
}

}  // namespace pq::cuda_bind
