// Checks a saved sequence state (what llama_state_seq_get_data wrote for sequence 0) against the context it is
// about to be loaded into, before llama.cpp reads it (issue #14). llama.cpp trusts the counts in a state: it
// reserves a batch for the cell count before comparing it with the cache (a cell count of 0x7fffffff made it
// allocate tens of GB), and several of its checks come after it has already emptied the sequence. This walks the
// whole state with the context's own layout (cache sizes, layer list, K/V types and row sizes, V transposition,
// cell extension) and bounds every count by the bytes that are there, without allocating anything the state's
// size does not justify.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "llama.h"

namespace huozi {

// The code a rejected state gets in JS (lib/chat/session.ts turns it into a SessionFileError).
constexpr const char *kSessionFileCode = "ERR_HUOZI_SESSION_FILE";

// Empty when this context's memory is a kind CheckSeqState knows (a KV cache, or an interleaved SWA pair of
// them, or none), else why not.
std::string SeqStateSupport(llama_context *ctx);

// Empty when `data` is a state of sequence 0 that this context can load and that holds exactly `n_tokens`
// tokens at positions 0..n_tokens-1 (token ids in cell extensions below n_vocab); else what is wrong with it.
std::string CheckSeqState(llama_context *ctx, const uint8_t *data, size_t size, size_t n_tokens, int32_t n_vocab);

}  // namespace huozi
