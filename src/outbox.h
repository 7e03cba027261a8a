// The way out of a generation thread into JS, for both generation loops (workers/generate.cc: one sequence's
// text; parallel.cc: every request's text and outcomes). The producing thread adds under a lock; the main
// thread is woken through one thread-safe function at most once per interval (the request's streamIntervalMs,
// generation.h says why that rate), and while a wake is on its way new text joins what is queued, so a fast
// model never queues one N-API call per token behind a slow consumer. Interval 0 wakes at once, and with it
// every token's text stays a piece of its own (one SSE event per token, as llama-server). Outcomes go with
// interval 0, after any text queued before them, in the same delivery.
//
// A wake already queued is still dispatched after Close(), so the owner (whose Deliver it calls) must live
// until `closed` runs: it holds itself until then (GenerateWorker is deleted there, ParallelContext unreferenced).
#pragma once
#include <napi.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "sampler.h"

namespace huozi {

// What one stream hands to JS at a time: text, and the logprob entries of the tokens sampled since the previous
// chunk (only when asked; a token whose text is held back still sends its entry).
struct Chunk {
  std::string text;
  std::vector<TokenLogprob> logprobs;
  bool has_logprobs = false;  // the stream asked for logprobs (the chunk then carries its list, maybe empty)
};

// `text` and `entries` join the chunks queued for one stream: the last chunk grows, or with interval 0 (or
// nothing queued) a new chunk starts.
inline void JoinChunk(std::vector<Chunk> &chunks, const std::string &text, std::vector<TokenLogprob> &&entries,
                      bool has_logprobs, std::chrono::milliseconds interval) {
  if (chunks.empty() || interval.count() == 0) {
    chunks.push_back(Chunk{text, std::move(entries), has_logprobs});
  } else {
    chunks.back().text += text;
    chunks.back().logprobs.insert(chunks.back().logprobs.end(), std::make_move_iterator(entries.begin()),
                                  std::make_move_iterator(entries.end()));
  }
}

template <typename Pending>
class Outbox final {
 public:
  using Clock = std::chrono::steady_clock;

  Outbox() = default;
  Outbox(const Outbox &) = delete;
  Outbox &operator=(const Outbox &) = delete;

  // Main thread, before the producer starts. Each wake calls `deliver` on the main thread, which Take()s what
  // is queued and calls JS (`fn` is the function the thread-safe function is created for). `closed` runs on
  // the main thread once Close() was called and the last queued wake has run (or at environment teardown).
  void Open(Napi::Env env, Napi::Function fn, const char *name, std::function<void(Napi::Env)> deliver,
            std::function<void()> closed) {
    deliver_ = std::move(deliver);
    tsfn_ = Napi::ThreadSafeFunction::New(env, fn, name, 0, 1, [closed = std::move(closed)](Napi::Env) { closed(); });
    open_ = true;
  }
  bool open() const { return open_; }

  // Producer thread: `add(pending)` under the lock, then a wake unless one is on its way or the last was less
  // than `interval` ago (what is not due yet goes with a later Put or the owner's final Take()). No allocation
  // here beyond what `add` does; the wake itself is one NonBlockingCall.
  template <typename Add>
  void Put(std::chrono::milliseconds interval, Add &&add) {
    if (!open_) return;
    std::lock_guard<std::mutex> lock(mu_);
    add(pending_);
    if (scheduled_) return;
    const auto now = Clock::now();
    if (now - last_wake_ < interval) return;
    last_wake_ = now;
    scheduled_ = true;
    tsfn_.NonBlockingCall(this, [](Napi::Env env, Napi::Function, Outbox *self) {
      if (env != nullptr) self->deliver_(env);
    });
  }

  // Main thread: everything queued so far; the next Put may wake again.
  Pending Take() {
    Pending out{};
    std::lock_guard<std::mutex> lock(mu_);
    std::swap(out, pending_);
    scheduled_ = false;
    return out;
  }

  // Main thread: whether a wake keeps the event loop alive (ParallelContext: only while requests are open).
  void Ref(Napi::Env env) { tsfn_.Ref(env); }
  void Unref(Napi::Env env) { tsfn_.Unref(env); }

  // Main thread, after the producer's last Put: no more wakes; `closed` follows.
  void Close() {
    if (!open_) return;
    open_ = false;
    tsfn_.Release();
  }

 private:
  std::mutex mu_;
  Pending pending_{};
  bool scheduled_ = false;
  Clock::time_point last_wake_{};
  bool open_ = false;
  Napi::ThreadSafeFunction tsfn_;
  std::function<void(Napi::Env)> deliver_;
};

}  // namespace huozi
