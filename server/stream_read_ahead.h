// StreamReadAhead: reads a gRPC stream on its own thread into a bounded queue, so that a handler can
// take "every item that has arrived" as one batch without blocking for more. Ingest needs this: a
// client may wait for the acks of what it sent before sending more, so waiting to fill a batch could
// deadlock, while items that are already there should share one engine call.
//
// gRPC allows one Read() and one Write() in flight at once on a sync stream, so the handler keeps
// writing responses while this thread reads. The reader stops at the end of the stream (or when the
// call is cancelled); the bounded queue makes gRPC's flow control push back on a fast client.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace scanserve {

template <typename Message>
class StreamReadAhead {
 public:
  // `read` is the stream's Read: fills the message, false at the end. Starts reading at once.
  StreamReadAhead(std::function<bool(Message*)> read, size_t capacity)
      : read_(std::move(read)), capacity_(capacity < 1 ? 1 : capacity), thread_([this] { ReadLoop(); }) {}

  // Joins the reader: the stream must end or the call be cancelled first (see Abandon()).
  ~StreamReadAhead() { Join(); }

  StreamReadAhead(const StreamReadAhead&) = delete;
  StreamReadAhead& operator=(const StreamReadAhead&) = delete;

  // Blocks until a message has arrived or the stream ended; then moves up to `max` arrived messages
  // into `out` (cleared first). False once the stream has ended and everything was taken.
  bool NextBatch(size_t max, std::vector<Message>* out) {
    out->clear();
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [this] { return !queue_.empty() || ended_; });
    while (!queue_.empty() && out->size() < max) {
      out->push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    not_full_.notify_one();
    return !out->empty();
  }

  // The consumer stops taking messages (e.g. its writes failed); the reader drops whatever else
  // arrives until the stream ends. Cancel the call too, so that the stream does end.
  void Abandon() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      abandoned_ = true;
      queue_.clear();
    }
    not_full_.notify_one();
  }

  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  void ReadLoop() {
    for (;;) {
      Message message;
      if (!read_(&message)) break;
      std::unique_lock<std::mutex> lock(mu_);
      not_full_.wait(lock, [this] { return queue_.size() < capacity_ || abandoned_; });
      if (abandoned_) continue;
      queue_.push_back(std::move(message));
      not_empty_.notify_one();
    }
    std::lock_guard<std::mutex> lock(mu_);
    ended_ = true;
    not_empty_.notify_one();
  }

  std::function<bool(Message*)> read_;
  const size_t capacity_;

  std::mutex mu_;  // guards queue_, ended_, abandoned_
  std::condition_variable not_empty_;  // a message arrived, or the stream ended
  std::condition_variable not_full_;   // room in queue_, or abandoned
  std::deque<Message> queue_;
  bool ended_ = false;
  bool abandoned_ = false;

  std::thread thread_;  // last: starts after the members it uses
};

}  // namespace scanserve
