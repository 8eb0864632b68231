#pragma once

// The budget actor: every budget counter of a runtime lives here, so agents
// racing on one budget can never overshoot it (each reservation is checked and
// granted in one message handler).
//
//   agent --budget_reserve--> budget --budget_verdict--> agent --model call-->
//   agent --budget_charge---> budget      (real usage replaces the estimate)
//
// Accounts form a tree under the root account "global": a team's account sits
// inside its caller's, a run's inside its team's. A reservation names its path
// (budget_reserve::path); missing accounts are created with the limits given
// (an existing account keeps its own), and a reservation is granted only when
// the estimate fits every limit of every account from the run's account up to
// "global", counting what is used and what is reserved. A charge adds to the
// account and all its ancestors, so they keep the usage of children that are
// gone. An account whose deadline has passed, or that was closed, refuses
// everything below it.
//
// Collection: a closed account goes as soon as it has no children (taking
// closed ancestors left childless along); any other account without children
// or open reservations goes once it saw no reservation or charge for
// `idle_ttl` and its deadline, if it has one, has passed (so a live run's
// account survives a long wait for a human). A sweep runs every
// min(idle_ttl, 60 s) while there are accounts besides "global", which is
// never removed. The sweep timer does not keep the actor alive.
//
// Restarts: a durable run that goes on from its checkpoint (or takes a reply
// from its journal) reports what its earlier attempts spent as a
// budget_recount; charges of durable runs carry the same key. The actor keeps
// what it counted per key (while an account charged under the key exists,
// and idle_ttl after), and counts in the run's account and above only what is
// new to it: a run restarted in another process brings its spending along,
// one restarted in this process brings nothing twice. The restarted run's own
// account (a new one with each attempt) takes the whole total, so the run's
// own limits count it too. So limits hold across restarts. A recount that
// counted something new is traced as "budget.recounted".
//
// With a tracer, a refused reservation is traced as "budget.denied" and each
// warning as "budget.warning" (in the reservation's span), both naming the
// account and the limit ("steps", "input_tokens", "output_tokens", "cost";
// a refusal may also name "deadline", "closed" or "malformed"), so metrics
// can count them by limit without reading the text.

#include <chrono>
#include <map>
#include <string>

#include <caf/fwd.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "messages/budget.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// The price of a model, per million tokens.
struct model_price {
  double input_usd_per_mtok = 0;
  double output_usd_per_mtok = 0;
};

/// Prices by model name. A name matches exactly, or else by its part after
/// the provider prefix ("openai:gpt-4o-mini" finds "gpt-4o-mini").
class price_table {
public:
  price_table() = default;

  /// Sets the price of a model. Throws std::invalid_argument for a negative
  /// price or an empty name.
  void set(const std::string& model, model_price price);

  /// The price of a model; nullptr when the table has none.
  const model_price* find(const std::string& model) const;

  /// What `tokens` cost on `model`, in nano-dollars (0 when unpriced).
  int64_t cost_nusd(const std::string& model, const token_usage& tokens) const;

  bool empty() const noexcept {
    return prices_.empty();
  }

  const std::map<std::string, model_price>& all() const noexcept {
    return prices_;
  }

private:
  std::map<std::string, model_price> prices_;
};

/// How the budget actor is set up.
struct budget_config {
  /// Limits of the root account, "global" (0 = unlimited).
  budget_limits global;
  /// Share of a limit at which an account warns, once per limit: (0, 1].
  double warn_share = 0.8;
  /// How long an account without children or open reservations is kept
  /// after its last reservation or charge, and past its deadline if it has
  /// one (a closed one goes at once).
  std::chrono::milliseconds idle_ttl{std::chrono::minutes{10}};
};

/// The budget actor's interface.
using budget_actor = caf::typed_actor<
  caf::replies_to<budget_reserve>::with<budget_verdict>,
  caf::reacts_to<budget_charge>, caf::reacts_to<budget_release>,
  caf::reacts_to<budget_close>, caf::reacts_to<budget_recount>,
  caf::replies_to<bg_query_atom, std::string>::with<budget_snapshot>>;

/// Spawns a budget actor that traces its refusals and warnings to `tracer`
/// (none when empty). Throws std::invalid_argument for a bad config.
budget_actor spawn_budget(caf::actor_system& sys, budget_config cfg = {},
                          tracer_actor tracer = {});

/// One line naming what an amount is: "2 steps, 300 input + 40 output tokens,
/// $0.000120".
std::string describe(const budget_amount& x);

} // namespace troupe
