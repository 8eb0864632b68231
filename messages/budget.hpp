#pragma once

// The budget protocol: agent -> budget actor (actors/budget.hpp).
//   budget_reserve -> budget_verdict   sets an estimate aside before a model call
//   budget_charge                      settles a reservation with real usage
//   budget_release                     gives an unused reservation back
//   budget_close                       ends a run's account
//   budget_recount                     counts what earlier attempts spent
//   budget_query -> budget_snapshot    what an account has used
// Budgets nest: a run's account sits inside its team's, inside the global one.
// A reservation names the whole path (outermost first, the global root
// implied), the budget actor creates missing accounts on the way, and a charge
// counts against every ancestor. Money travels as integer nano-dollars, so
// totals add up exactly.

#include <cstdint>
#include <string>
#include <vector>

#include <caf/atom.hpp>

#include "messages/common.hpp"

namespace troupe {

/// Hard limits of a run, a team or the whole runtime; 0 means unlimited.
struct budget_limits {
  int64_t max_steps = 0;
  int64_t max_input_tokens = 0;
  int64_t max_output_tokens = 0;
  double max_cost_usd = 0;
  /// Unix time in milliseconds.
  int64_t deadline_ms = 0;
};
TROUPE_MESSAGE(budget_limits, max_steps, max_input_tokens, max_output_tokens,
               max_cost_usd, deadline_ms)

/// One level of a budget path: an account and its limits.
struct budget_scope {
  std::string account;
  budget_limits limits;
};
TROUPE_MESSAGE(budget_scope, account, limits)

/// What a call or a run uses (or may use).
struct budget_amount {
  int64_t steps = 0;
  token_usage tokens;
  /// Nano-dollars (1e-9 USD).
  int64_t cost_nusd = 0;
};
TROUPE_MESSAGE(budget_amount, steps, tokens, cost_nusd)

/// Asks to set aside an estimate before a model call. `path` runs from the
/// outermost account below the global root to the run's own account.
struct budget_reserve {
  run_ref ref;
  std::vector<budget_scope> path;
  std::string reservation_id;
  std::string model;
  budget_amount estimate;
};
TROUPE_MESSAGE(budget_reserve, ref, path, reservation_id, model, estimate)

/// The answer to a reservation.
struct budget_verdict {
  std::string reservation_id;
  bool granted = false;
  /// Why not: the account, the exhausted limit and the figures.
  std::string reason;
  /// Warnings newly raised by this reservation: an account crossed its
  /// warning share of a limit (each account warns once per limit).
  std::vector<std::string> warnings;
};
TROUPE_MESSAGE(budget_verdict, reservation_id, granted, reason, warnings)

/// Settles a reservation with what the call really used.
struct budget_charge {
  std::string account;
  std::string reservation_id;
  std::string model;
  budget_amount usage;
  /// A durable run's key (its run id and checkpoint key), or "": the budget
  /// actor remembers what it counted under the key, so a budget_recount of
  /// the same spending after a restart does not count it twice.
  std::string key;
};
TROUPE_MESSAGE(budget_charge, account, reservation_id, model, usage, key)

/// Returns an unused reservation (the call failed before using anything).
struct budget_release {
  std::string account;
  std::string reservation_id;
};
TROUPE_MESSAGE(budget_release, account, reservation_id)

/// Ends an account: its open reservations are released; what it used stays
/// charged to its ancestors.
struct budget_close {
  std::string account;
};
TROUPE_MESSAGE(budget_close, account)

/// What the attempts of a durable run have spent up to now (`total`, charges
/// and recounts added up), sent when a run goes on from its checkpoint and
/// for each reply taken from its journal. Earlier attempts may have been
/// charged in another process, whose budget died with it: the budget actor
/// opens `path` as a reservation would and counts the part of `total` it has
/// not yet counted under `key`, so a run's limits, and its team's, hold
/// across restarts without counting anything twice. No limit is checked: the
/// money is spent; the next reservation sees it.
struct budget_recount {
  run_ref ref;
  std::vector<budget_scope> path;
  std::string key;
  budget_amount total;
};
TROUPE_MESSAGE(budget_recount, ref, path, key, total)

/// What an account has used and holds reserved.
struct budget_snapshot {
  std::string account;
  bool exists = false;
  budget_limits limits;
  budget_amount used;
  budget_amount reserved;
  /// Reservations granted and refused in this account or below it.
  int64_t granted = 0;
  int64_t denied = 0;
};
TROUPE_MESSAGE(budget_snapshot, account, exists, limits, used, reserved,
               granted, denied)

/// Asks for an account's snapshot: (bg_query_atom, account).
using bg_query_atom = caf::atom_constant<caf::atom("bg_query")>;

/// Name of the root account every path sits in.
inline constexpr const char* global_budget_account = "global";

/// The largest money limit: its nano-dollars must fit in an int64_t.
inline constexpr double max_budget_usd = 9e9;

/// Nano-dollars as dollars.
inline double nusd_to_usd(int64_t nusd) {
  return static_cast<double>(nusd) / 1e9;
}

/// Dollars as nano-dollars (rounded to nearest).
inline int64_t usd_to_nusd(double usd) {
  return static_cast<int64_t>(usd * 1e9 + (usd >= 0 ? 0.5 : -0.5));
}

} // namespace troupe
