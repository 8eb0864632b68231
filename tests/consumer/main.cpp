// A downstream program built against an installed troupe: it sees only the
// installed headers and links troupe::troupe through find_package(troupe).

#include <cstdlib>
#include <iostream>

#include <caf/all.hpp>

#include "messages/type_ids.hpp"

int main() {
  caf::actor_system_config cfg;
  troupe::register_messages(cfg);

  troupe::run_task task;
  task.ref.run_id = "run-1";
  task.ref.principal = "consumer";
  task.goal = "summarise the installed headers";
  task.budget.max_steps = 3;

  // The JSON conversion must round-trip.
  troupe::json j = task;
  auto back = j.get<troupe::run_task>();
  if (back != task) {
    std::cerr << "consumer: JSON round trip changed the task: " << j.dump()
              << '\n';
    return EXIT_FAILURE;
  }

  // And the message must travel through a real actor system.
  caf::actor_system sys{cfg};
  auto echo = sys.spawn([]() -> caf::behavior {
    return {[](const troupe::run_task& t) {
      troupe::run_result r;
      r.status = troupe::run_status::complete;
      r.answer = t.goal;
      return r;
    }};
  });
  caf::scoped_actor self{sys};
  bool ok = false;
  self->request(echo, caf::infinite, back)
    .receive(
      [&](const troupe::run_result& r) {
        std::cout << "consumer ok: " << r.answer << std::endl;
        ok = true;
      },
      [&](const caf::error& err) {
        std::cerr << "consumer: request failed: " << sys.render(err) << '\n';
      });
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
