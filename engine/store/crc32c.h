// CRC-32C (Castagnoli, the polynomial of iSCSI, ext4 and RocksDB): the checksum of the store's
// records. Uses the SSE4.2 crc32 instruction when the build targets it (x86-64-v2 and up), else
// a table; both give the same values.
#pragma once

#include <cstddef>
#include <cstdint>

namespace scanserve {

// The CRC-32C of data[0, n) continued from `crc` (the CRC of the preceding bytes; 0 to start).
// Crc32c("123456789", 9) == 0xE3069283.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

namespace internal {
// The table-driven path, always compiled, so tests can compare it with the hardware path.
uint32_t Crc32cPortable(const void* data, size_t n, uint32_t crc);
}  // namespace internal

}  // namespace scanserve
