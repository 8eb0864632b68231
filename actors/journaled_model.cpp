#include "actors/journaled_model.hpp"

#include <algorithm>
#include <chrono>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <spdlog/spdlog.h>

#include "actors/span_recorder.hpp"
#include "messages/errors.hpp"
#include "runtime/clock.hpp"

namespace troupe {

std::string journal_key(const chat_request& req) {
  // Params stay out: the agent sets max_tokens from a budget estimate, which
  // may differ between incarnations for the same question.
  json question{{"model", req.model},
                {"messages", req.messages},
                {"tools", req.tools}};
  return "model/" + req.ref.run_id + "/" + req.agent + "/"
         + stable_hash(safe_dump(question));
}

namespace {

/// How long the journal may take to answer before the model is asked anyway.
constexpr auto journal_timeout = std::chrono::seconds{10};

struct journaled_state {
  static inline const char* name = "troupe.journaled_model";
  model_actor model;
  store_actor store;
  span_recorder trace;
};

using journaled_self = model_actor::stateful_pointer<journaled_state>;

/// The time a request may still take (its deadline, else two minutes).
std::chrono::milliseconds time_left(const chat_request& req) {
  if (req.deadline_ms <= 0)
    return std::chrono::minutes{2};
  return std::chrono::milliseconds{std::max<int64_t>(req.deadline_ms - now_ms(), 1)};
}

/// Asks the model, journals its reply, then delivers it.
void ask_model(journaled_self self, chat_request req, std::string key,
               caf::typed_response_promise<chat_response> rp) {
  auto timeout = time_left(req);
  auto run_id = req.ref.run_id;
  self->request(self->state.model, timeout, std::move(req))
    .then(
      [self, rp, key, run_id](chat_response& resp) mutable {
        self->request(self->state.store, journal_timeout, st_jr_put_atom::value,
                      run_id, key, std::string{"model"}, json_value{json(resp)})
          .then(
            [rp, resp](bool ok) mutable {
              if (!ok)
                spdlog::warn("journaled model: the journal did not keep a "
                             "reply (see the store's error); delivering it "
                             "anyway");
              rp.deliver(std::move(resp));
            },
            [rp, resp](caf::error& err) mutable {
              spdlog::warn("journaled model: the journal did not answer ({}); "
                           "delivering the reply unjournaled",
                           error_text(err));
              rp.deliver(std::move(resp));
            });
      },
      [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
}

model_actor::behavior_type journaled(journaled_self self, model_actor model,
                                     store_actor store, tracer_actor tracer) {
  self->state.model = std::move(model);
  self->state.store = std::move(store);
  self->state.trace = span_recorder{std::move(tracer)};
  return {
    [self](chat_request& req) -> caf::result<chat_response> {
      if (req.ref.run_id.empty())
        return self->delegate(self->state.model, std::move(req));
      auto rp = self->make_response_promise<chat_response>();
      auto key = journal_key(req);
      self->request(self->state.store, journal_timeout, st_jr_get_atom::value,
                    key)
        .then(
          [self, rp, key, req](json_value& found) mutable {
            if (found.value.is_null()) {
              ask_model(self, std::move(req), std::move(key), std::move(rp));
              return;
            }
            chat_response resp;
            try {
              resp = found.value.get<chat_response>();
            } catch (const std::exception& ex) {
              spdlog::warn("journaled model: entry {} is unreadable ({}); "
                           "asking the model again",
                           key, ex.what());
              ask_model(self, std::move(req), std::move(key), std::move(rp));
              return;
            }
            resp.replayed = true;
            self->state.trace.event(
              req.ref.trace_id, req.ref.span_id, "model.replayed",
              [&] { return json{{"gen_ai.agent.name", req.agent},
                                {"gen_ai.request.model", req.model},
                                {"troupe.journal.key", key}}; });
            rp.deliver(std::move(resp));
          },
          [self, rp, key, req](caf::error& err) mutable {
            spdlog::warn("journaled model: the journal did not answer ({}); "
                         "asking the model",
                         error_text(err));
            ask_model(self, std::move(req), std::move(key), std::move(rp));
          });
      return rp;
    },
  };
}

} // namespace

model_actor spawn_journaled_model(caf::actor_system& sys, model_actor model,
                                  store_actor store, tracer_actor tracer) {
  return sys.spawn(journaled, std::move(model), std::move(store),
                   std::move(tracer));
}

} // namespace troupe
