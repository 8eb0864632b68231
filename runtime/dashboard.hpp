#pragma once

// The dashboard `troupe serve` offers at / : a page, a script and a style
// sheet (runtime/dashboard/) that talk to the HTTP API of docs/http-api.md.
// They are compiled into the library (cmake/EmbedDashboard.cmake writes them
// as byte arrays into a source in the build tree), so a server needs no files
// beside its binary and serves exactly the files it was built with.
//
//   if (auto f = troupe::dashboard_file(target_path))   // "/", "/assets/app.js"
//     respond(200, f->content_type, f->body);
//   else
//     respond(404, ...);

#include <optional>
#include <string>

namespace troupe {

/// One file of the dashboard.
struct dashboard_asset {
  /// With its charset, e.g. "text/html; charset=utf-8".
  std::string content_type;
  std::string body;
};

/// The file for a request path (without its query): "/" is the page,
/// "/assets/app.js" and "/assets/style.css" its script and style sheet.
/// Any other path, spelled differently or not, is nullopt.
std::optional<dashboard_asset> dashboard_file(const std::string& path);

} // namespace troupe
