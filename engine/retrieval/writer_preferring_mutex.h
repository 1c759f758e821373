// A shared mutex that does not starve writers. std::shared_mutex is glibc's rwlock with its default
// reader preference: under a steady stream of overlapping searches a publish could wait forever.
// Here a writer holds a turnstile while it waits for the exclusive lock, and new readers pass the
// same turnstile, so they queue behind it while the readers already inside drain.
// Usable with std::unique_lock and std::shared_lock.
#pragma once

#include <mutex>
#include <shared_mutex>

namespace scanserve {

class WriterPreferringSharedMutex {
 public:
  void lock() {
    std::lock_guard<std::mutex> turnstile(turnstile_);
    mu_.lock();
  }
  void unlock() { mu_.unlock(); }

  void lock_shared() {
    { std::lock_guard<std::mutex> turnstile(turnstile_); }
    mu_.lock_shared();
  }
  void unlock_shared() { mu_.unlock_shared(); }

 private:
  std::mutex turnstile_;  // held by a writer from the moment it wants mu_ until it has it
  std::shared_mutex mu_;  // the lock itself
};

}  // namespace scanserve
