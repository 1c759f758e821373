// I/O fault injection for tests: write and sync calls on files under one directory fail with EIO.
//
// The library defines write, pwrite, pwrite64, writev, fsync and fdatasync, which take the place of
// libc's in a process that links it (a test binary) or preloads it (LD_PRELOAD, for the real
// server); calls on other files, or while no fault is armed, go to libc.
//
// Arming, in a process that links it: ScanserveIoFaultsArm(dir, mode). In a preloading process:
// the environment variable SCANSERVE_IO_FAULTS_DIR names the directory and SCANSERVE_IO_FAULTS_FILE
// a trigger file; faults are armed while that file exists, in the mode written in it ("sync" or
// "all").
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

enum ScanserveIoFaultMode {
  kScanserveIoFaultsOff = 0,
  // fsync and fdatasync fail; writes reach the page cache (a disk failing write-back: after the
  // failed sync the bytes are there to read, whether or not they reach the disk).
  kScanserveIoFaultsSync = 1,
  // Writes fail too: nothing more reaches the files.
  kScanserveIoFaultsAll = 2,
};

// Faults on files whose path starts with `dir` (absolute, resolved), in `mode`; Off disarms.
void ScanserveIoFaultsArm(const char* dir, enum ScanserveIoFaultMode mode);

// Calls failed so far.
long ScanserveIoFaultsInjected(void);

#ifdef __cplusplus
}
#endif
