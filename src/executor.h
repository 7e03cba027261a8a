// A thread of its own for each context. Everything that computes on a context (decode, generate) runs here
// rather than on whichever libuv pool thread picks up the job: ggml's CPU backend uses OpenMP, and OpenMP
// keeps one team of spinning threads per *calling* thread, so calls from 2-4 different pool threads leave
// 2-4 teams fighting over the cores. Measured on 2 cores, huozi-tiny f16, 2 threads: 2900 t/s from one
// thread, 750-850 t/s once calls came from several pool threads.
// Executors are recycled through ExecutorPool: a new thread per context would also mean a new OpenMP team
// and a new malloc arena each time (RSS grew by ~60 MiB over 30 create/dispose cycles before recycling).
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <memory>
#include <thread>
#include <vector>

namespace huozi {

class Executor final {
 public:
  Executor() : thread_([this] { Loop(); }) {}
  ~Executor() { Stop(); }
  Executor(const Executor &) = delete;
  Executor &operator=(const Executor &) = delete;

  // Runs `fn` on the executor's thread and waits for it; rethrows what it threw.
  void Run(std::function<void()> fn) {
    std::packaged_task<void()> task(std::move(fn));
    std::future<void> done = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    done.get();
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    for (;;) {
      std::packaged_task<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

// Idle executors, reused by later contexts. Never destroyed: at process exit a thread may still be inside a
// long computation, and joining it from a static destructor would hang the exit.
class ExecutorPool final {
 public:
  static std::unique_ptr<Executor> Acquire() {
    ExecutorPool &pool = Instance();
    std::lock_guard<std::mutex> lock(pool.mu_);
    if (pool.idle_.empty()) return std::make_unique<Executor>();
    std::unique_ptr<Executor> e = std::move(pool.idle_.back());
    pool.idle_.pop_back();
    return e;
  }

  // Called once the executor's last task has returned.
  static void Release(std::unique_ptr<Executor> executor) {
    if (!executor) return;
    ExecutorPool &pool = Instance();
    std::lock_guard<std::mutex> lock(pool.mu_);
    pool.idle_.push_back(std::move(executor));
  }

 private:
  static ExecutorPool &Instance() {
    static ExecutorPool *pool = new ExecutorPool();
    return *pool;
  }
  std::mutex mu_;
  std::vector<std::unique_ptr<Executor>> idle_;
};

}  // namespace huozi
