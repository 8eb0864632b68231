#include "actors/budget.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <set>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "actors/span_recorder.hpp"
#include "runtime/clock.hpp"

namespace troupe {

// --- prices -----------------------------------------------------------------

void price_table::set(const std::string& model, model_price price) {
  if (model.empty())
    throw std::invalid_argument("price_table: model name must not be empty");
  auto check = [&model](double x, const char* field) {
    if (!std::isfinite(x) || x < 0)
      throw std::invalid_argument("price_table: " + std::string{field}
                                  + " of model '" + model
                                  + "' must be a non-negative number");
  };
  check(price.input_usd_per_mtok, "input_usd_per_mtok");
  check(price.output_usd_per_mtok, "output_usd_per_mtok");
  prices_[model] = price;
}

const model_price* price_table::find(const std::string& model) const {
  if (auto i = prices_.find(model); i != prices_.end())
    return &i->second;
  auto colon = model.find(':');
  if (colon == std::string::npos)
    return nullptr;
  if (auto i = prices_.find(model.substr(colon + 1)); i != prices_.end())
    return &i->second;
  return nullptr;
}

int64_t price_table::cost_nusd(const std::string& model,
                               const token_usage& tokens) const {
  auto price = find(model);
  if (price == nullptr)
    return 0;
  // USD per million tokens is nano-dollars per thousandth of a token: x1000.
  return std::llround(static_cast<double>(tokens.input_tokens)
                        * price->input_usd_per_mtok * 1000
                      + static_cast<double>(tokens.output_tokens)
                          * price->output_usd_per_mtok * 1000);
}

// --- formatting -------------------------------------------------------------

namespace {

/// Nano-dollars as "$1.2345": exact digits, trailing zeros trimmed down to
/// `min_decimals`.
std::string money(int64_t nusd, int min_decimals) {
  std::string sign = nusd < 0 ? "-" : "";
  auto abs = nusd < 0 ? -static_cast<uint64_t>(nusd)
                      : static_cast<uint64_t>(nusd);
  auto frac = std::to_string(abs % 1'000'000'000u);
  frac.insert(0, 9 - frac.size(), '0');
  while (frac.size() > static_cast<size_t>(min_decimals) && frac.back() == '0')
    frac.pop_back();
  return sign + "$" + std::to_string(abs / 1'000'000'000u)
         + (frac.empty() ? "" : "." + frac);
}

/// "1 step", "2 steps", "300 input tokens".
std::string count(int64_t n, const char* singular, const char* plural) {
  return std::to_string(n) + " " + (n == 1 ? singular : plural);
}

/// A share as a percentage: "80%", "87.5%".
std::string percent(double share) {
  auto tenths = std::llround(share * 1000);
  auto out = std::to_string(tenths / 10);
  if (tenths % 10 != 0)
    out += "." + std::to_string(tenths % 10);
  return out + "%";
}

} // namespace

std::string describe(const budget_amount& x) {
  return count(x.steps, "step", "steps") + ", "
         + std::to_string(x.tokens.input_tokens) + " input + "
         + std::to_string(x.tokens.output_tokens) + " output tokens, "
         + money(x.cost_nusd, 6);
}

// --- the actor --------------------------------------------------------------

namespace {

/// Asks the budget actor to collect idle accounts (internal).
using bg_sweep_atom = caf::atom_constant<caf::atom("bg_sweep")>;

using budget_impl = budget_actor::extend<caf::reacts_to<bg_sweep_atom>>;

using steady = std::chrono::steady_clock;

/// The four counted limits, in the order they are checked.
enum class limit_kind : size_t { steps, input_tokens, output_tokens, cost };

constexpr std::array<limit_kind, 4> all_kinds{limit_kind::steps,
                                              limit_kind::input_tokens,
                                              limit_kind::output_tokens,
                                              limit_kind::cost};

int64_t figure(const budget_amount& x, limit_kind k) {
  switch (k) {
    case limit_kind::steps:
      return x.steps;
    case limit_kind::input_tokens:
      return x.tokens.input_tokens;
    case limit_kind::output_tokens:
      return x.tokens.output_tokens;
    case limit_kind::cost:
      return x.cost_nusd;
  }
  return 0;
}

/// What `n` of a counted kind are called: "step", "input tokens".
const char* unit(int64_t n, limit_kind k) {
  switch (k) {
    case limit_kind::steps:
      return n == 1 ? "step" : "steps";
    case limit_kind::input_tokens:
      return n == 1 ? "input token" : "input tokens";
    case limit_kind::output_tokens:
      return n == 1 ? "output token" : "output tokens";
    case limit_kind::cost:
      break;
  }
  return "";
}

/// `n` of kind `k` as text: "5 steps", "$0.0100".
std::string amount_text(int64_t n, limit_kind k) {
  if (k == limit_kind::cost)
    return money(n, 4);
  return std::to_string(n) + " " + unit(n, k);
}

/// How traces name a limit: "steps", "input_tokens", "output_tokens", "cost".
const char* limit_key(limit_kind k) {
  switch (k) {
    case limit_kind::steps:
      return "steps";
    case limit_kind::input_tokens:
      return "input_tokens";
    case limit_kind::output_tokens:
      return "output_tokens";
    case limit_kind::cost:
      return "cost";
  }
  return "?";
}

const char* limit_name(limit_kind k) {
  switch (k) {
    case limit_kind::steps:
      return "step";
    case limit_kind::input_tokens:
      return "input token";
    case limit_kind::output_tokens:
      return "output token";
    case limit_kind::cost:
      return "cost";
  }
  return "?";
}

void add(budget_amount& x, const budget_amount& y) {
  x.steps += y.steps;
  x.tokens += y.tokens;
  x.cost_nusd += y.cost_nusd;
}

void subtract(budget_amount& x, const budget_amount& y) {
  x.steps -= y.steps;
  x.tokens.input_tokens -= y.tokens.input_tokens;
  x.tokens.output_tokens -= y.tokens.output_tokens;
  x.cost_nusd -= y.cost_nusd;
}

bool negative(const budget_amount& x) {
  return x.steps < 0 || x.tokens.input_tokens < 0 || x.tokens.output_tokens < 0
         || x.cost_nusd < 0;
}

bool is_zero(const budget_amount& x) {
  return x.steps == 0 && x.tokens.input_tokens == 0
         && x.tokens.output_tokens == 0 && x.cost_nusd == 0;
}

/// What `total` has beyond `counted`, field by field (never negative).
budget_amount beyond(const budget_amount& total, const budget_amount& counted) {
  auto more = [](int64_t t, int64_t c) { return t > c ? t - c : int64_t{0}; };
  budget_amount out;
  out.steps = more(total.steps, counted.steps);
  out.tokens.input_tokens = more(total.tokens.input_tokens,
                                 counted.tokens.input_tokens);
  out.tokens.output_tokens = more(total.tokens.output_tokens,
                                  counted.tokens.output_tokens);
  out.cost_nusd = more(total.cost_nusd, counted.cost_nusd);
  return out;
}

/// What the budget actor has counted for a durable run's key (charges and
/// recounts), so a recount after an attempt in this process counts nothing
/// twice.
struct counted_key {
  budget_amount amount;
  steady::time_point last_active;
};

/// The first negative field of a set of limits, or nullptr.
const char* negative_field(const budget_limits& x) {
  if (x.max_steps < 0)
    return "max_steps";
  if (x.max_input_tokens < 0)
    return "max_input_tokens";
  if (x.max_output_tokens < 0)
    return "max_output_tokens";
  // Nano-dollars in an int64_t: about 9.2e9 USD at most.
  if (!(x.max_cost_usd >= 0) || !std::isfinite(x.max_cost_usd)
      || x.max_cost_usd > max_budget_usd)
    return "max_cost_usd";
  if (x.deadline_ms < 0)
    return "deadline_ms";
  return nullptr;
}

/// One budget account, a node of the tree under "global".
struct account {
  std::string name;
  /// Empty for the root.
  std::string parent;
  budget_limits limits;
  /// limits.max_cost_usd in nano-dollars.
  int64_t max_cost_nusd = 0;
  budget_amount used;
  budget_amount reserved;
  int64_t granted = 0;
  int64_t denied = 0;
  std::set<std::string> children;
  /// Open reservations made for this account itself, by id.
  std::unordered_map<std::string, budget_amount> open;
  /// Whether the warning for each limit_kind was raised.
  std::array<bool, 4> warned{};
  /// Closed by budget_close: removed as soon as it has no children.
  bool closed = false;
  /// A charge exceeded its reservation (logged once per account).
  bool overran = false;
  /// Durable run keys charged or recounted here: their counted amounts
  /// stay while this account does.
  std::set<std::string> keys;
  steady::time_point last_active;

  int64_t limit(limit_kind k) const {
    switch (k) {
      case limit_kind::steps:
        return limits.max_steps;
      case limit_kind::input_tokens:
        return limits.max_input_tokens;
      case limit_kind::output_tokens:
        return limits.max_output_tokens;
      case limit_kind::cost:
        return max_cost_nusd;
    }
    return 0;
  }
};

struct budget_state {
  static inline const char* name = "troupe.budget";
  budget_config cfg;
  /// Every account by name; node-based, so pointers stay valid until erased.
  std::unordered_map<std::string, account> accounts;
  /// What was counted per durable run key: kept while an account charged
  /// under the key exists, then idle_ttl.
  std::unordered_map<std::string, counted_key> counted;
  /// A sweep message is on its way.
  bool sweep_pending = false;
  /// Forwards the sweep timer (see sweep_relay).
  caf::actor relay;
  /// Refusals and warnings go here.
  span_recorder trace;

  account& make_account(const std::string& name, const std::string& parent,
                        const budget_limits& limits) {
    auto& a = accounts[name];
    a.name = name;
    a.parent = parent;
    a.limits = limits;
    a.max_cost_nusd = usd_to_nusd(limits.max_cost_usd);
    a.last_active = steady::now();
    if (!parent.empty())
      accounts.at(parent).children.insert(name);
    return a;
  }

  account* find(const std::string& name) {
    auto i = accounts.find(name);
    return i == accounts.end() ? nullptr : &i->second;
  }

  /// The account and its ancestors, leaf first, global last.
  std::vector<account*> chain(account& leaf) {
    std::vector<account*> out{&leaf};
    while (!out.back()->parent.empty())
      out.push_back(&accounts.at(out.back()->parent));
    return out;
  }

  /// The run's own account at the end of `path`, creating missing ones.
  account& open_path(const std::vector<budget_scope>& path) {
    auto* current = &accounts.at(global_budget_account);
    for (const auto& scope : path) {
      if (auto* existing = find(scope.account)) {
        if (existing->parent != current->name && existing != current)
          spdlog::debug("budget: account '{}' sits in '{}', not in '{}' as a "
                        "reservation path says; keeping its place",
                        existing->name, existing->parent, current->name);
        current = existing;
        continue;
      }
      if (current->closed)
        break; // refused anyway; no new account under a closed one
      current = &make_account(scope.account, current->name, scope.limits);
    }
    return *current;
  }

  /// Gives reservation `id` of `leaf` back to the leaf and its ancestors.
  void release(account& leaf, const std::string& id) {
    auto i = leaf.open.find(id);
    if (i == leaf.open.end())
      return;
    for (auto* a : chain(leaf))
      subtract(a->reserved, i->second);
    leaf.open.erase(i);
  }

  /// Removes an account, then every closed ancestor left without children.
  void remove(std::string name) {
    while (name != global_budget_account) {
      auto i = accounts.find(name);
      if (i == accounts.end())
        return;
      auto parent = i->second.parent;
      for (auto& [id, estimate] : i->second.open) {
        for (auto* a : chain(i->second))
          subtract(a->reserved, estimate);
      }
      // What was counted under its keys is kept idle_ttl from now on.
      for (const auto& key : i->second.keys)
        if (auto k = counted.find(key); k != counted.end())
          k->second.last_active = steady::now();
      accounts.erase(i);
      auto& p = accounts.at(parent);
      p.children.erase(name);
      if (!p.closed || !p.children.empty() || !p.open.empty())
        return;
      name = parent;
    }
  }

  /// Why `estimate` does not fit account `a` now, or "" when it does; sets
  /// `limit` to the key of the limit that refuses (see budget.hpp).
  std::string refusal(const account& a, const budget_amount& estimate,
                      int64_t now, const char*& limit_out) const {
    if (a.closed) {
      limit_out = "closed";
      return "budget '" + a.name + "' is closed";
    }
    if (a.limits.deadline_ms > 0 && now >= a.limits.deadline_ms) {
      limit_out = "deadline";
      return "budget '" + a.name + "' deadline passed "
             + std::to_string(now - a.limits.deadline_ms) + " ms ago";
    }
    for (auto k : all_kinds) {
      auto limit = a.limit(k);
      if (limit <= 0)
        continue;
      auto used = figure(a.used, k);
      auto reserved = figure(a.reserved, k);
      auto more = figure(estimate, k);
      auto taken = used + reserved;
      if (taken <= limit && more <= limit - taken)
        continue;
      limit_out = limit_key(k);
      std::string figures;
      if (k == limit_kind::cost)
        figures = " (" + money(used, 4) + " used, " + money(reserved, 4)
                  + " reserved)";
      else
        figures = " (" + std::to_string(used) + " used"
                  + (reserved != 0
                       ? ", " + std::to_string(reserved) + " reserved"
                       : std::string{})
                  + ")";
      std::string head = "budget '" + a.name + "' exhausted: ";
      if (more == 0)
        return head + "its limit of " + amount_text(limit, k)
               + " is already exceeded" + figures;
      if (k == limit_kind::cost)
        return head + "cost " + money(more, 4)
               + " more would exceed its limit of " + money(limit, 4) + figures;
      return head + std::to_string(more) + " more " + unit(more, k)
             + " would exceed its limit of " + amount_text(limit, k) + figures;
    }
    return {};
  }

  /// Warnings account `a` raises now (once per limit), with the key of each
  /// one's limit in `limits`.
  void warn(account& a, std::vector<std::string>& out,
            std::vector<const char*>& limits) {
    for (auto k : all_kinds) {
      auto limit = a.limit(k);
      auto i = static_cast<size_t>(k);
      if (limit <= 0 || a.warned[i])
        continue;
      auto taken = figure(a.used, k) + figure(a.reserved, k);
      if (static_cast<double>(taken)
          < cfg.warn_share * static_cast<double>(limit))
        continue;
      a.warned[i] = true;
      std::string figures = k == limit_kind::cost
                              ? money(taken, 4) + " of " + money(limit, 4)
                              : std::to_string(taken) + " of "
                                  + amount_text(limit, k);
      out.push_back("budget '" + a.name + "': " + percent(cfg.warn_share)
                    + " of its " + limit_name(k) + " limit reached (" + figures
                    + ")");
      limits.push_back(limit_key(k));
    }
  }

  /// How often idle accounts are looked for.
  std::chrono::milliseconds sweep_period() const {
    return std::min<std::chrono::milliseconds>(cfg.idle_ttl,
                                               std::chrono::seconds{60});
  }

  /// Removes accounts without children or reservations that saw no
  /// reservation or charge for idle_ttl and whose deadline (if any) has
  /// passed, level by level up the tree. The deadline keeps a live run's
  /// account (and its team's) while the run waits between model calls, for
  /// a human or a slow tool, however long that takes.
  void sweep() {
    auto now = steady::now();
    auto wall = now_ms();
    std::set<std::string> live;
    for (const auto& [name, a] : accounts)
      live.insert(a.keys.begin(), a.keys.end());
    for (auto i = counted.begin(); i != counted.end();) {
      if (live.count(i->first) == 0
          && now - i->second.last_active >= cfg.idle_ttl)
        i = counted.erase(i);
      else
        ++i;
    }
    auto idle = [this, now, wall](const account& a) {
      return a.name != global_budget_account && a.children.empty()
             && a.open.empty() && now - a.last_active >= cfg.idle_ttl
             && (a.limits.deadline_ms <= 0 || wall >= a.limits.deadline_ms);
    };
    for (;;) {
      std::vector<std::string> names;
      for (auto& [name, a] : accounts)
        if (idle(a))
          names.push_back(name);
      if (names.empty())
        return;
      for (auto& name : names) {
        // An earlier removal may have taken it along (a closed parent).
        if (auto* a = find(name); a != nullptr && idle(*a)) {
          spdlog::debug("budget: collecting idle account '{}'", name);
          remove(name);
        }
      }
    }
  }
};

using budget_self = budget_impl::stateful_pointer<budget_state>;

/// A pending delayed message holds its receiver (and sender) alive, so a
/// sweep timer aimed at the budget actor would keep an otherwise unreachable
/// actor running, and its actor system from shutting down, until the next
/// sweep. The timer goes to this relay instead, which holds the budget actor
/// only weakly and ends with it.
caf::behavior sweep_relay(caf::event_based_actor*, caf::weak_actor_ptr budget) {
  return {
    [budget](bg_sweep_atom) {
      if (auto handle = caf::actor_cast<budget_impl>(budget))
        caf::anon_send(handle, bg_sweep_atom::value);
    },
  };
}

/// Schedules a sweep while there are accounts besides the root.
void schedule_sweep(budget_self self) {
  auto& st = self->state;
  if (st.sweep_pending || (st.accounts.size() <= 1 && st.counted.empty()))
    return;
  st.sweep_pending = true;
  caf::delayed_anon_send(st.relay, st.sweep_period(), bg_sweep_atom::value);
}

/// Why a reservation request is malformed, or "".
std::string malformed(const budget_reserve& req) {
  if (negative(req.estimate))
    return "budget reservation '" + req.reservation_id
           + "' has a negative estimate (" + describe(req.estimate) + ")";
  for (size_t i = 0; i < req.path.size(); ++i) {
    const auto& scope = req.path[i];
    if (scope.account.empty())
      return "budget path entry " + std::to_string(i) + " has no account name";
    if (auto field = negative_field(scope.limits))
      return "budget '" + scope.account + "' has a negative " + field;
  }
  return {};
}

budget_verdict on_reserve(budget_self self, budget_reserve& req) {
  auto& st = self->state;
  budget_verdict verdict;
  verdict.reservation_id = req.reservation_id;
  auto denied = [&st, &req, &verdict](const std::string& account,
                                      const char* limit) {
    st.trace.event(req.ref.trace_id, req.ref.span_id, "budget.denied", [&] {
      return json{{"troupe.budget.account", account},
                  {"troupe.budget.limit", limit},
                  {"troupe.budget.reservation", req.reservation_id},
                  {"troupe.budget.reason", verdict.reason}};
    });
  };
  if (verdict.reason = malformed(req); !verdict.reason.empty()) {
    spdlog::warn("{}", verdict.reason);
    denied(req.path.empty() ? std::string{} : req.path.back().account,
           "malformed");
    return verdict;
  }
  auto& leaf = st.open_path(req.path);
  // A reservation asked for again (a retry) replaces the first one.
  st.release(leaf, req.reservation_id);
  auto chain = st.chain(leaf);
  auto now = now_ms();
  auto active = steady::now();
  const char* limit = "";
  const account* refused_by = nullptr;
  for (auto* a : chain) {
    a->last_active = active;
    if (verdict.reason.empty()) {
      verdict.reason = st.refusal(*a, req.estimate, now, limit);
      if (!verdict.reason.empty())
        refused_by = a;
    }
  }
  if (refused_by != nullptr) {
    for (auto* a : chain)
      ++a->denied;
    spdlog::debug("budget: refused reservation '{}' of {}: {}",
                  req.reservation_id, describe(req.estimate), verdict.reason);
    denied(refused_by->name, limit);
    schedule_sweep(self);
    return verdict;
  }
  for (auto* a : chain) {
    add(a->reserved, req.estimate);
    ++a->granted;
    std::vector<const char*> limits;
    auto first = verdict.warnings.size();
    st.warn(*a, verdict.warnings, limits);
    for (size_t i = 0; i < limits.size(); ++i)
      st.trace.event(req.ref.trace_id, req.ref.span_id, "budget.warning", [&] {
        return json{{"troupe.budget.account", a->name},
                    {"troupe.budget.limit", limits[i]},
                    {"troupe.budget.share", st.cfg.warn_share},
                    {"troupe.budget.warning", verdict.warnings[first + i]}};
      });
  }
  leaf.open.emplace(req.reservation_id, req.estimate);
  verdict.granted = true;
  for (auto& w : verdict.warnings)
    spdlog::debug("{}", w);
  schedule_sweep(self);
  return verdict;
}

/// Whether `used` passed `reserved` in a kind some account from `a` up to
/// the root limits (passing an estimate nothing limits is harmless).
bool overran_a_limit(budget_state& st, account& a, const budget_amount& used,
                     const budget_amount& reserved) {
  bool input = used.tokens.input_tokens > reserved.tokens.input_tokens;
  bool output = used.tokens.output_tokens > reserved.tokens.output_tokens;
  bool cost = used.cost_nusd > reserved.cost_nusd;
  if (!input && !output && !cost)
    return false;
  for (auto* x : st.chain(a))
    if ((input && x->limits.max_input_tokens > 0)
        || (output && x->limits.max_output_tokens > 0)
        || (cost && x->max_cost_nusd > 0))
      return true;
  return false;
}

void on_charge(budget_state& st, const budget_charge& c) {
  auto* a = st.find(c.account);
  if (a == nullptr) {
    spdlog::warn("budget: ignoring a charge of {} to unknown account '{}' "
                 "(reservation '{}')",
                 describe(c.usage), c.account, c.reservation_id);
    return;
  }
  if (negative(c.usage)) {
    spdlog::warn("budget: ignoring the usage of a charge to '{}' "
                 "(reservation '{}'): it is negative ({})",
                 c.account, c.reservation_id, describe(c.usage));
    st.release(*a, c.reservation_id);
    return;
  }
  if (auto r = a->open.find(c.reservation_id); r == a->open.end()) {
    spdlog::debug("budget: charge to '{}' for reservation '{}', which is not "
                  "open; counting the usage anyway",
                  c.account, c.reservation_id);
  } else if (overran_a_limit(st, *a, c.usage, r->second)) {
    // The limits were checked against the estimate: say where it fell
    // short, once per account.
    auto level = a->overran ? spdlog::level::debug : spdlog::level::warn;
    a->overran = true;
    if (spdlog::should_log(level))
      spdlog::log(level,
                  "budget: '{}' used more than reservation '{}' set aside "
                  "(used {}; reserved {}); its limits were checked against "
                  "the reservation: raise the agent's usage_estimate to keep "
                  "them strict",
                  c.account, c.reservation_id, describe(c.usage),
                  describe(r->second));
  }
  st.release(*a, c.reservation_id);
  auto active = steady::now();
  for (auto* x : st.chain(*a)) {
    add(x->used, c.usage);
    x->last_active = active;
  }
  if (!c.key.empty()) {
    auto& k = st.counted[c.key];
    add(k.amount, c.usage);
    k.last_active = active;
    a->keys.insert(c.key);
  }
}

void on_recount(budget_self self, const budget_recount& r) {
  auto& st = self->state;
  std::string bad;
  if (r.key.empty())
    bad = "it has no key";
  else if (r.path.empty())
    bad = "it has no account path";
  else if (negative(r.total))
    bad = "its total is negative (" + describe(r.total) + ")";
  for (size_t i = 0; bad.empty() && i < r.path.size(); ++i) {
    if (r.path[i].account.empty())
      bad = "path entry " + std::to_string(i) + " has no account name";
    else if (auto field = negative_field(r.path[i].limits))
      bad = "budget '" + r.path[i].account + "' has a negative " + field;
  }
  if (!bad.empty()) {
    spdlog::warn("budget: ignoring a recount for '{}': {}", r.key, bad);
    return;
  }
  auto active = steady::now();
  auto& k = st.counted[r.key];
  k.last_active = active;
  auto& leaf = st.open_path(r.path);
  leaf.keys.insert(r.key);
  // New to this budget: counted in the run's account and all above it.
  auto more = beyond(r.total, k.amount);
  for (auto* x : st.chain(leaf)) {
    add(x->used, more);
    x->last_active = active;
  }
  add(k.amount, more);
  // The run's own account is new with each attempt: it takes the whole of
  // what the run spent, so the run's own limits count it too (its ancestors
  // have it already, from the account of the attempt before).
  add(leaf.used, beyond(r.total, leaf.used));
  if (is_zero(more)) {
    schedule_sweep(self);
    return;
  }
  spdlog::debug("budget: counted {} that earlier attempts of '{}' spent, in "
                "'{}' and above",
                describe(more), r.key, leaf.name);
  st.trace.event(r.ref.trace_id, r.ref.span_id, "budget.recounted", [&] {
    return json{{"troupe.budget.account", leaf.name},
                {"troupe.budget.key", r.key},
                {"troupe.budget.steps", more.steps},
                {"gen_ai.usage.input_tokens", more.tokens.input_tokens},
                {"gen_ai.usage.output_tokens", more.tokens.output_tokens},
                {"troupe.cost_nusd", more.cost_nusd}};
  });
  schedule_sweep(self);
}

void on_close(budget_state& st, const std::string& name) {
  if (name == global_budget_account) {
    spdlog::warn("budget: the global account cannot be closed");
    return;
  }
  auto* a = st.find(name);
  if (a == nullptr) {
    spdlog::debug("budget: close of unknown account '{}'", name);
    return;
  }
  std::vector<std::string> ids;
  for (auto& [id, estimate] : a->open)
    ids.push_back(id);
  for (auto& id : ids)
    st.release(*a, id);
  a->closed = true;
  if (a->children.empty())
    st.remove(name);
}

budget_snapshot snapshot(budget_state& st, const std::string& name) {
  budget_snapshot out;
  out.account = name;
  auto* a = st.find(name);
  if (a == nullptr)
    return out;
  out.exists = true;
  out.limits = a->limits;
  out.used = a->used;
  out.reserved = a->reserved;
  out.granted = a->granted;
  out.denied = a->denied;
  return out;
}

budget_impl::behavior_type budget(budget_self self, budget_config cfg,
                                  tracer_actor tracer) {
  auto& st = self->state;
  st.cfg = cfg;
  st.trace = span_recorder{std::move(tracer)};
  st.make_account(global_budget_account, "", cfg.global);
  st.relay = self->system().spawn(sweep_relay,
                                  caf::actor_cast<caf::weak_actor_ptr>(self));
  self->attach_functor([relay = st.relay] {
    caf::anon_send_exit(relay, caf::exit_reason::user_shutdown);
  });
  return {
    [self](budget_reserve& req) { return on_reserve(self, req); },
    [self](budget_charge& c) { on_charge(self->state, c); },
    [self](budget_release& r) {
      auto* a = self->state.find(r.account);
      if (a == nullptr || a->open.count(r.reservation_id) == 0) {
        spdlog::debug("budget: release of unknown reservation '{}' of '{}'",
                      r.reservation_id, r.account);
        return;
      }
      self->state.release(*a, r.reservation_id);
    },
    [self](budget_close& c) { on_close(self->state, c.account); },
    [self](budget_recount& r) { on_recount(self, r); },
    [self](bg_query_atom, const std::string& name) {
      return snapshot(self->state, name);
    },
    [self](bg_sweep_atom) {
      self->state.sweep_pending = false;
      self->state.sweep();
      schedule_sweep(self);
    },
  };
}

} // namespace

budget_actor spawn_budget(caf::actor_system& sys, budget_config cfg,
                          tracer_actor tracer) {
  if (!(cfg.warn_share > 0 && cfg.warn_share <= 1))
    throw std::invalid_argument("budget_config: warn_share must be in (0, 1], "
                                "got "
                                + std::to_string(cfg.warn_share));
  if (auto field = negative_field(cfg.global))
    throw std::invalid_argument("budget_config: global." + std::string{field}
                                + " must not be negative");
  if (cfg.idle_ttl <= std::chrono::milliseconds{0})
    throw std::invalid_argument("budget_config: idle_ttl must be positive, got "
                                + std::to_string(cfg.idle_ttl.count()) + " ms");
  return sys.spawn(budget, std::move(cfg), std::move(tracer));
}

} // namespace troupe
