// sampling.cu: launch code of the device sampler (kernels/sampling.cuh).
#include "../compat.cuh"
#include "../kernels/sampling.cuh"
#include "../ops_sampling.h"

namespace pq::cuda {

namespace {
int sample_blocks(int64_t n) {
    const int64_t per = (int64_t)kSampleBlock * 8;
    const int64_t b = (n + per - 1) / per;
    return (int)(b < 1 ? 1 : b > kSampleMaxBlocks ? kSampleMaxBlocks : b);
}
}  // namespace

// The workspace (sample_workspace_bytes, plan/workspace_sizes.h): per-block maxima, the candidate count,
// the candidate list.
// cap < kSampleCap only in tests (forces the whole-row path on small rows).
cudaError_t sample_token_cap(const float* logits, int64_t n, const SampleParams& p, int32_t* out, void* workspace,
                             size_t workspace_bytes, int cap, cudaStream_t stream) {
    if (n <= 0 || n > INT_MAX || !workspace || workspace_bytes < sample_workspace_bytes(n)) return cudaErrorInvalidValue;
    if (cap < 0 || cap > kSampleCap) return cudaErrorInvalidValue;
    if (!(p.temperature > 0.0f) || !(p.top_p > 0.0f) || p.min_p < 0.0f || p.top_k < 0) return cudaErrorInvalidValue;
    char* ws = static_cast<char*>(workspace);
    float* partial = reinterpret_cast<float*>(ws);
    int32_t* count = reinterpret_cast<int32_t*>(ws + align_up(sizeof(float) * kSampleMaxBlocks));
    SampleCand* cand = reinterpret_cast<SampleCand*>(ws + align_up(sizeof(float) * kSampleMaxBlocks) +
                                                     align_up(sizeof(int32_t)));
    const int nb = sample_blocks(n);
    const float cutoff = kSampleCutoff * (p.temperature > 1.0f ? p.temperature : 1.0f);
    const float top_p = p.top_p < 1.0f ? p.top_p : 1.0f;
    PQ_LAUNCH(sample_max_kernel, nb, kSampleBlock, 0, stream, logits, n, partial, count);
    PQ_LAUNCH(sample_compact_kernel, nb, kSampleBlock, 0, stream, logits, n, partial, nb, cutoff, cand, count, cap);
    // A row that cannot overflow the list needs few threads; a long row may fall back to a whole-row scan.
    if (n <= cap) {
        auto* k = sample_select_kernel<256>;
        PQ_LAUNCH(k, 1, 256, 0, stream, logits, n, partial, nb, cand, count, cap, p.temperature, p.top_k, top_p,
                  p.min_p, p.seed, p.counter, out);
    } else {
        auto* k = sample_select_kernel<1024>;
        PQ_LAUNCH(k, 1, 1024, 0, stream, logits, n, partial, nb, cand, count, cap, p.temperature, p.top_k, top_p,
                  p.min_p, p.seed, p.counter, out);
    }
    return cudaGetLastError();
}

cudaError_t sample_token(const float* logits, int64_t n, const SampleParams& p, int32_t* out, void* workspace,
                         size_t workspace_bytes, cudaStream_t stream) {
    return sample_token_cap(logits, n, p, out, workspace, workspace_bytes, kSampleCap, stream);
}

}  // namespace pq::cuda
