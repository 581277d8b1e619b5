// plan_py.h: the workspace plan (workspace_sizes.h) as the Python dict both pyqwen._spec (the memory plan)
// and pyqwen._cuda (CudaModel.workspace) return, so a plan and an allocation compare key by key.
#pragma once

#include <pybind11/pybind11.h>

#include "workspace_sizes.h"

namespace pq::cuda {

inline pybind11::dict workspace_to_dict(const WorkspacePlan& p) {
    pybind11::dict d;
    d["activations"] = p.activations;
    d["logits"] = p.logits;
    d["scratch"] = p.scratch;
    d["misc"] = p.misc;
    d["total"] = p.total();
    return d;
}

}  // namespace pq::cuda
