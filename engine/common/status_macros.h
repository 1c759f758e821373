// Error plumbing shared by the engine: absl::Status across every boundary, an aborting check for
// broken internal invariants (never for caller errors).
#pragma once

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SCANSERVE_CONCAT_INNER_(a, b) a##b
#define SCANSERVE_CONCAT_(a, b) SCANSERVE_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when it is not OK.
#define SCANSERVE_RETURN_IF_ERROR(expr)            \
  do {                                             \
    ::absl::Status scanserve_status_ = (expr);     \
    if (!scanserve_status_.ok()) return scanserve_status_; \
  } while (0)

// `SCANSERVE_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from a StatusOr or returns its error.
#define SCANSERVE_ASSIGN_OR_RETURN(lhs, expr) \
  SCANSERVE_ASSIGN_OR_RETURN_IMPL_(SCANSERVE_CONCAT_(scanserve_statusor_, __LINE__), lhs, expr)
#define SCANSERVE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                     \
  if (!tmp.ok()) return tmp.status();                    \
  lhs = std::move(tmp).value()

// Internal invariants only: a failure is a bug in scanserve, so it aborts with the location.
#define SCANSERVE_CHECK(cond)                                                          \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "%s:%d: SCANSERVE_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)
