// selftest_module.cpp: pybind11 module `pq_emu_selftest` over the self-test kernels, both variants.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "emu/emu_control.h"

#define PQ_SELFTEST_NS selftest
#include "selftest_kernels.h"
#undef PQ_SELFTEST_NS
#define PQ_SELFTEST_NS nobarrier
#include "selftest_kernels.h"
#undef PQ_SELFTEST_NS

namespace py = pybind11;

namespace {
template <class T>
py::array_t<T> arr(const std::vector<T>& v) {
    return py::array_t<T>((py::ssize_t)v.size(), v.data());
}
template <class T>
std::vector<T> vec(const py::array_t<T, py::array::c_style | py::array::forcecast>& a) {
    return std::vector<T>(a.data(), a.data() + a.size());
}
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32 = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
}  // namespace

PYBIND11_MODULE(pq_emu_selftest, m) {
    m.def("set_seed", &pq_emu::set_seed);
    m.def("live_allocations", &pq_emu::live_allocations);
    m.def("block_sum", [](const F32& x, bool barrier) {
        return arr(barrier ? selftest::block_sum(vec(x)) : nobarrier::block_sum(vec(x)));
    }, py::arg("x"), py::arg("barrier") = true);
    m.def("dyn_block_sum", [](const F32& x, int block, bool barrier) {
        return arr(barrier ? selftest::dyn_block_sum(vec(x), block) : nobarrier::dyn_block_sum(vec(x), block));
    }, py::arg("x"), py::arg("block"), py::arg("barrier") = true);
    m.def("warp_ops", [](const I32& x) { return arr(selftest::warp_ops(vec(x))); });
    m.attr("WARP_TESTS") = selftest::kWarpTests;
    m.def("barrier_votes", [](const I32& x) { return arr(selftest::barrier_votes(vec(x))); });
    m.def("block_3d", [] { return arr(selftest::block_3d()); });
    m.def("atomics", [](const I32& v, int nbins) { return arr(selftest::atomics(vec(v), nbins)); });
    m.def("dp4a", [](const I32& a, const I32& b, const I32& c, bool u) {
        return arr(selftest::dp4a(vec(a), vec(b), vec(c), u));
    });
    m.def("to_16bit", [](const F32& x) { return arr(selftest::to_16bit(vec(x))); });
    m.def("half_ops", [](const F32& a, const F32& b) { return arr(selftest::half_ops(vec(a), vec(b))); });
    m.def("launch_errors", [] { return selftest::launch_errors(); });
    m.def("divergent_exit", &selftest::divergent_exit);
    m.def("divergent_sites", &selftest::divergent_sites);
    m.def("shfl_lane_exits", &selftest::shfl_lane_exits);
    m.def("shfl_vs_barrier", &selftest::shfl_vs_barrier);
    m.def("shfl_not_in_mask", &selftest::shfl_not_in_mask);
    m.def("shfl_mask_mismatch", &selftest::shfl_mask_mismatch);
    m.def("shfl_missing_lanes", &selftest::shfl_missing_lanes);
    m.def("smem_overflow", &selftest::smem_overflow);
    m.def("trap", &selftest::trap);
    m.def("oob_read", &selftest::oob_read);
    m.def("use_after_free", &selftest::use_after_free);
    m.def("stream_order", [] { return selftest::stream_order(); });
    m.def("event_pipeline", [](int mode) { return selftest::event_pipeline(mode); });
    m.def("event_rerecord", [] { return selftest::event_rerecord(); });
    m.def("graph_semantics", [] { return selftest::graph_semantics(); });
    m.def("rc_write_write", &selftest::rc_write_write);
    m.def("rc_warp_exchange", [](bool sync) { return arr(selftest::rc_warp_exchange(sync)); });
    m.def("rc_warp_exchange_nosync", [] { return arr(selftest::rc_warp_exchange(false)); });
    m.def("rc_cross_warp", [] { return arr(selftest::rc_cross_warp()); });
    m.def("rc_shared_atomics", &selftest::rc_shared_atomics);
    m.def("block_sum_nobarrier", [] {  // for run_aborting: no arguments
        std::vector<float> x(512, 1.0f);
        return arr(nobarrier::block_sum(x));
    });
#if PQ_EMU_RACECHECK
    m.attr("RACECHECK") = true;
#else
    m.attr("RACECHECK") = false;
#endif
}
