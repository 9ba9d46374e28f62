// Fuzz target: bytes given to load_state go through the state reader (model/state.h) and the
// check against a context's shape. Only headkv::Error may come out, and a buffer the reader accepts
// must serialize back to the same bytes (the reader keeps nothing it did not check).
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "common/error.h"
#include "model/state.h"

using namespace headkv;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const KVState s = deserialize_state(data, size);
    if (serialize_state(s) != std::vector<uint8_t>(data, data + size)) std::abort();
    try {  // the seeds' model shape: 2 layers, 1 KV head, head size 4, vocabulary 8
      check_state(s, 2, 1, 4, 8, s.method, KVType::F16, KVType::F16, 16);
    } catch (const Error&) {
    }
  } catch (const Error&) {
  }
  return 0;
}
