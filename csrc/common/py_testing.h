// py_testing.h: the `testing` submodule of a pybind11 module (pyqwen._core.testing, pyqwen._cuda.testing,
// pyqwen_cuda_emu.testing). It holds the entry points that exist for the tests and for debugging --
// reference kernels, numpy-level kernel calls, test hooks -- apart from the production API at the top level.
#pragma once

#include <pybind11/pybind11.h>

namespace pq {

// m.testing, also entered in sys.modules so that `import <module>.testing` and
// `from <module>.testing import f` work like for a Python package.
inline pybind11::module_ testing_submodule(pybind11::module_& m, const char* doc) {
    pybind11::module_ t = m.def_submodule("testing", doc);
    pybind11::module_::import("sys").attr("modules")[t.attr("__name__")] = t;
    return t;
}

}  // namespace pq
