#pragma once

// The journaled model: a model actor in front of another that records every
// reply of a run in the store's journal before handing it back, and answers
// a request it has already answered from the journal. A run resumed after
// its process died asks its models the same questions again (the same agent,
// the same conversation); the answers it already paid for come from the
// journal, so no token is paid twice and the run takes the same path.
//
//   agent --chat_request--> journaled model --(journal miss)--> model
//                                  |  \--(journal hit)--> recorded reply
//                                  \--> store: the reply, keyed by run, agent
//                                       and a digest of model, messages, tools
//
// Requests without a run id pass straight through. A reply is journaled
// (committed) before it is delivered, so nothing acts on a reply the journal
// lacks. A reply from the journal is marked: chat_response::replayed (the
// agent then tells its budget an earlier attempt paid for it) and a
// "model.replayed" trace event in the model call's span. When the store cannot be read the call
// goes to the model (and is logged): the journal saves money, it never stops
// a run.

#include <caf/fwd.hpp>

#include "actors/store_actor.hpp"
#include "messages/model.hpp"
#include "messages/trace.hpp"

namespace troupe {

/// The journal key of a request: "model/RUN/AGENT/DIGEST".
std::string journal_key(const chat_request& req);

/// Spawns a journaled model in front of `model`.
model_actor spawn_journaled_model(caf::actor_system& sys, model_actor model,
                                  store_actor store, tracer_actor tracer = {});

} // namespace troupe
