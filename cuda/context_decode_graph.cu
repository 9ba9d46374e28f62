// CudaContext: the decode step as one CUDA graph (captured once per arena layout and logits buffer,
// replayed each step with its token and position read from device memory), and the development
// profile of its stages (HEADKV_PROFILE=1).
#include <cstdio>

#include "context_impl.cuh"

namespace headkv {

void CudaContext::Impl::mark(int stage) {
  if (!prof.capturing) return;
  cudaEvent_t e = nullptr;
  check(cudaEventCreate(&e), "profile event");
  check(cudaEventRecordWithFlags(e, st, cudaEventRecordExternal), "profile event");  // a graph node
  prof.ev.push_back(e);
  prof.stage.push_back(stage);
}

void CudaContext::Impl::profile_step() {
  if (!prof.on || prof.ev.size() < 2) return;
  check(cudaStreamSynchronize(st), "profile");
  for (size_t i = 1; i < prof.ev.size(); ++i) {
    float t = 0.0f;
    if (cudaEventElapsedTime(&t, prof.ev[i - 1], prof.ev[i]) == cudaSuccess) prof.ms[prof.stage[i]] += t;
  }
  ++prof.steps;
}

void CudaContext::Impl::profile_report() {
  if (!prof.steps) return;
  static const char* names[8] = {"embed", "qkv matvec", "rope+store", "attention", "out matvec", "gate/up matvec",
                                 "down matvec", "output head"};
  double tot = 0.0;
  for (double v : prof.ms) tot += v;
  std::fprintf(stderr, "headkv profile: %lld decode steps, %.3f ms/token between the first and last event\n",
               (long long)prof.steps, tot / prof.steps);
  for (int i = 0; i < 8; ++i)
    std::fprintf(stderr, "  %-16s %8.1f us/token  %5.1f%%\n", names[i], 1e3 * prof.ms[i] / prof.steps,
                 tot > 0 ? 100.0 * prof.ms[i] / tot : 0.0);
}

void CudaContext::Impl::drop_graph() {
  if (graph) cudaGraphExecDestroy(graph);
  graph = nullptr;
  for (cudaEvent_t e : prof.ev) cudaEventDestroy(e);
  prof.ev.clear();
  prof.stage.clear();
}

// The decode step's graph (one token: forward over the arena + output head), captured once per
// arena layout and logits buffer. It is captured when a prompt has been evaluated (prepare_decode),
// so a prompt's cost includes it and a decode step only replays it; a step that finds none (a
// one-token first eval, or a capture that failed after the prompt) captures it first.
void CudaContext::Impl::capture_decode_graph() {
  if (!graph) {
    cudaGraph_t g = nullptr;
    check(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "graph capture");
    prof.capturing = prof.on;
    try {
      if (logits_in_graph) copy_step_input();
      forward_arena(1, 0, step_in.get() + 1);
      head(x.get(), 1);
      mark(7);
      if (logits_in_graph) fetch_logits(1, logits_pin);
      prof.capturing = false;
    } catch (...) {
      prof.capturing = false;
      cudaStreamEndCapture(st, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    check(cudaStreamEndCapture(st, &g), "graph capture");
    const cudaError_t e = cudaGraphInstantiate(&graph, g, 0);
    cudaGraphDestroy(g);
    check(e, "graph instantiate");
  }
}

// After a prompt: the graph is captured now (a failure here is left for the first decode step to
// report: the prompt itself has been evaluated).
void CudaContext::Impl::prepare_decode() {
  if (graph || !x.get()) return;  // (no scratch: released, the next eval captures)
  try {
    capture_decode_graph();
  } catch (...) {
    cudaGetLastError();
  }
}

// The step's token and position, step_host -> step_in (a node of the graph with logits_in_graph).
void CudaContext::Impl::copy_step_input() {
  check(cudaMemcpyAsync(step_in.get(), step_host, 2 * sizeof(int32_t), cudaMemcpyHostToDevice, st), "step input");
}

void CudaContext::Impl::decode_graph_step(int32_t token) {
  capture_decode_graph();
  step_host[0] = token;  // no step runs now (eval synchronizes): the graph reads them when it runs
  step_host[1] = n_past;
  if (!logits_in_graph) copy_step_input();
  check(cudaGraphLaunch(graph, st), "graph launch");
  profile_step();
}

}  // namespace headkv
