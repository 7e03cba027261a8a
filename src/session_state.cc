#include "session_state.h"

#include <cstring>
#include <stdexcept>
#include <typeinfo>
#include <vector>

#include "ggml.h"
#include "llama-context.h"
#include "llama-kv-cache-iswa.h"
#include "llama-kv-cache.h"
#include "llama-kv-cells.h"
#include "llama-model.h"

namespace huozi {
namespace {

// llama-context.cpp's io_magic: the first four bytes of every sequence state.
constexpr uint32_t kStateMagic = 0xaf143cd8;

struct BadState : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Reads the state front to back; never past its end.
class Reader {
 public:
  Reader(const uint8_t *data, size_t size) : data_(data), size_(size) {}
  size_t left() const { return size_ - at_; }
  size_t at() const { return at_; }

  template <typename T>
  T Get(const std::string &what) {
    if (left() < sizeof(T)) Fail("it ends inside " + what);
    T value;
    std::memcpy(&value, data_ + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }

  void Skip(uint64_t bytes, const std::string &what) {
    if (bytes > left()) {
      Fail("it ends inside " + what + " (" + std::to_string(bytes) + " bytes wanted, " + std::to_string(left()) + " left)");
    }
    at_ += static_cast<size_t>(bytes);
  }

  [[noreturn]] void Fail(const std::string &why) const {
    throw BadState("at byte " + std::to_string(at_) + " of the KV state: " + why);
  }

 private:
  const uint8_t *data_;
  size_t size_;
  size_t at_ = 0;
};

std::string Num(uint64_t n) { return std::to_string(n); }

// One llama_kv_cache's part of the state (llama_kv_cache::state_write with seq_id 0): the stream count, per
// stream a cell count, then for the stream holding cells its cells' metadata, then the keys and values of every
// layer. `all_tokens`: the cache holds every token of the sequence (no sliding window masks any out).
void CheckKvCache(Reader &r, const llama_kv_cache &kv, const llama_hparams &hp, bool v_trans, bool all_tokens,
                  size_t n_tokens, int32_t n_vocab, const std::string &name) {
  const uint32_t n_stream = r.Get<uint32_t>(name + "'s stream count");
  if (n_stream != kv.get_n_stream()) {
    r.Fail(name + " has " + Num(n_stream) + " streams, this context's has " + Num(kv.get_n_stream()));
  }
  for (uint32_t s = 0; s < n_stream; ++s) {
    const uint32_t cells = r.Get<uint32_t>(name + "'s cell count");
    if (cells == 0) {
      if (s == 0 && all_tokens && n_tokens > 0) r.Fail(name + " holds no cells for the " + Num(n_tokens) + " saved tokens");
      continue;
    }
    // Sequence 0 lives in stream 0; a state of sequence 0 has no cells anywhere else.
    if (s != 0) r.Fail(name + " has cells in stream " + Num(s) + ", which does not hold sequence 0");
    if (cells > kv.get_size()) {
      r.Fail(name + "'s cell count " + Num(cells) + " is more than this context's cache holds (" + Num(kv.get_size()) + ")");
    }
    if (all_tokens ? cells != n_tokens : cells > n_tokens) {
      r.Fail(name + "'s cell count " + Num(cells) + " does not match the " + Num(n_tokens) + " saved tokens");
    }
    const bool ext = kv.has_cell_ext();
    const uint64_t per_cell = sizeof(llama_pos) + sizeof(uint32_t) + sizeof(llama_seq_id) + (ext ? sizeof(llama_kv_cell_ext) : 0);
    if (uint64_t{cells} * per_cell > r.left()) {
      r.Fail(name + "'s " + Num(cells) + " cells need " + Num(uint64_t{cells} * per_cell) + " bytes of metadata, only " +
             Num(r.left()) + " are left");
    }
    std::vector<bool> seen(n_tokens, false);
    llama_pos max_pos = -1;
    for (uint32_t i = 0; i < cells; ++i) {
      const llama_pos pos = r.Get<llama_pos>("a cell's position");
      const uint32_t n_seq_id = r.Get<uint32_t>("a cell's sequence count");
      if (n_seq_id != 1) r.Fail("cell " + Num(i) + " belongs to " + Num(n_seq_id) + " sequences, not 1");
      if (ext) {
        const llama_kv_cell_ext e = r.Get<llama_kv_cell_ext>("a cell's extension");
        if (e.tok != LLAMA_TOKEN_NULL && (e.tok < 0 || e.tok >= n_vocab)) {
          r.Fail("cell " + Num(i) + " names token " + std::to_string(e.tok) + ", outside the vocabulary");
        }
      }
      const llama_seq_id seq = r.Get<llama_seq_id>("a cell's sequence id");
      if (seq != 0) r.Fail("cell " + Num(i) + " belongs to sequence " + std::to_string(seq) + ", not 0");
      if (pos < 0 || static_cast<size_t>(pos) >= n_tokens) {
        r.Fail("cell " + Num(i) + " is at position " + std::to_string(pos) + ", outside 0.." + Num(n_tokens) + "-1");
      }
      if (seen[pos]) r.Fail("two cells are at position " + std::to_string(pos));
      seen[pos] = true;
      if (pos > max_pos) max_pos = pos;
    }
    if (static_cast<size_t>(max_pos) + 1 != n_tokens) {
      r.Fail(name + "'s last position is " + std::to_string(max_pos) + ", the saved tokens end at " + Num(n_tokens - 1));
    }

    const uint32_t file_v_trans = r.Get<uint32_t>("the V layout flag");
    if (file_v_trans > 1) r.Fail("the V layout flag is " + Num(file_v_trans) + ", not 0 or 1");
    if ((file_v_trans == 1) != v_trans) {
      r.Fail(std::string("the values are stored ") + (file_v_trans ? "transposed (flash attention off)" : "untransposed (flash attention on)") +
             ", this context stores them " + (v_trans ? "transposed (flash attention off)" : "untransposed (flash attention on)"));
    }
    const std::vector<uint32_t> layers = kv.get_layer_ids();
    const uint32_t n_layer = r.Get<uint32_t>("the layer count");
    if (n_layer != layers.size()) r.Fail(name + " has " + Num(n_layer) + " layers, this context's has " + Num(layers.size()));

    for (uint32_t il : layers) {
      const ggml_tensor *k = kv.get_k_storage(static_cast<int32_t>(il));
      const int32_t type = r.Get<int32_t>("a key type");
      if (type != static_cast<int32_t>(k->type)) {
        r.Fail("layer " + Num(il) + "'s keys are of type " + std::to_string(type) + ", this context's are " + ggml_type_name(k->type));
      }
      const uint64_t row = r.Get<uint64_t>("a key row size");
      const uint64_t expected = ggml_row_size(k->type, hp.n_embd_k_gqa(il));
      if (row != expected) r.Fail("layer " + Num(il) + "'s key rows are " + Num(row) + " bytes, this context's " + Num(expected));
      r.Skip(row * cells, "layer " + Num(il) + "'s keys");
    }
    if (hp.is_mla()) continue;  // MLA caches keep no values
    const ggml_type type_v = kv.type_v();
    for (uint32_t il : layers) {
      const int32_t type = r.Get<int32_t>("a value type");
      if (type != static_cast<int32_t>(type_v)) {
        r.Fail("layer " + Num(il) + "'s values are of type " + std::to_string(type) + ", this context's are " + ggml_type_name(type_v));
      }
      const uint32_t n_embd_v = hp.n_embd_v_gqa(il);
      if (!v_trans) {
        const uint64_t row = r.Get<uint64_t>("a value row size");
        const uint64_t expected = ggml_row_size(type_v, n_embd_v);
        if (row != expected) r.Fail("layer " + Num(il) + "'s value rows are " + Num(row) + " bytes, this context's " + Num(expected));
        r.Skip(row * cells, "layer " + Num(il) + "'s values");
      } else {
        const uint32_t el = r.Get<uint32_t>("a value element size");
        if (el != ggml_type_size(type_v)) {
          r.Fail("layer " + Num(il) + "'s value elements are " + Num(el) + " bytes, this context's " + Num(ggml_type_size(type_v)));
        }
        const uint32_t n_embd = r.Get<uint32_t>("a value width");
        if (n_embd != n_embd_v) r.Fail("layer " + Num(il) + "'s values are " + Num(n_embd) + " wide, this context's " + Num(n_embd_v));
        r.Skip(uint64_t{n_embd} * cells * el, "layer " + Num(il) + "'s values");
      }
    }
  }
}

enum class MemoryKind { kNone, kKv, kIswa, kOther };

MemoryKind KindOf(llama_memory_i *mem) {
  if (mem == nullptr) return MemoryKind::kNone;
  const std::type_info &type = typeid(*mem);
  if (type == typeid(llama_kv_cache)) return MemoryKind::kKv;
  if (type == typeid(llama_kv_cache_iswa)) return MemoryKind::kIswa;
  return MemoryKind::kOther;
}

}  // namespace

std::string SeqStateSupport(llama_context *ctx) {
  llama_memory_i *mem = llama_get_memory(ctx);
  if (KindOf(mem) != MemoryKind::kOther) return "";
  return std::string("session files support models with a plain or sliding-window KV cache; this model's memory is a ") +
         typeid(*mem).name() + ", whose saved state cannot be checked before loading";
}

std::string CheckSeqState(llama_context *ctx, const uint8_t *data, size_t size, size_t n_tokens, int32_t n_vocab) {
  std::string unsupported = SeqStateSupport(ctx);
  if (!unsupported.empty()) return unsupported;
  try {
    Reader r(data, size);
    if (r.Get<uint32_t>("the magic number") != kStateMagic) r.Fail("wrong magic number");
    r.Get<llama_seq_id>("the sequence id");  // llama.cpp ignores it: the state goes to the sequence it is loaded into
    llama_memory_i *mem = llama_get_memory(ctx);
    const llama_hparams &hp = llama_get_model(ctx)->hparams;
    const bool v_trans = !ctx->get_cparams().flash_attn;
    switch (KindOf(mem)) {
      case MemoryKind::kNone:
        if (n_tokens != 0) r.Fail("this context keeps no memory, but " + Num(n_tokens) + " tokens were saved");
        break;
      case MemoryKind::kKv:
        CheckKvCache(r, *static_cast<llama_kv_cache *>(mem), hp, v_trans, hp.swa_type == LLAMA_SWA_TYPE_NONE, n_tokens,
                     n_vocab, "the KV cache");
        break;
      case MemoryKind::kIswa: {
        auto *iswa = static_cast<llama_kv_cache_iswa *>(mem);
        CheckKvCache(r, *iswa->get_base(), hp, v_trans, true, n_tokens, n_vocab, "the KV cache");
        CheckKvCache(r, *iswa->get_swa(), hp, v_trans, false, n_tokens, n_vocab, "the sliding-window KV cache");
        break;
      }
      case MemoryKind::kOther:
        break;  // refused above
    }
    if (r.left() != 0) r.Fail(Num(r.left()) + " bytes follow the end of the state");
  } catch (const BadState &bad) {
    return bad.what();
  }
  return "";
}

}  // namespace huozi
