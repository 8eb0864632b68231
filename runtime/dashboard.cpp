#include "runtime/dashboard.hpp"

#include <string_view>

namespace troupe {

namespace detail {

/// An embedded file of runtime/dashboard/ by its file name; defined in the
/// source cmake/EmbedDashboard.cmake generates in the build tree.
std::optional<std::string_view> dashboard_embedded(std::string_view file_name);

} // namespace detail

namespace {

struct route {
  std::string_view path;
  std::string_view file;
  std::string_view content_type;
};

// Only these: nothing else of the folder (or the file system) is reachable
// by a path, however it is spelled.
constexpr route routes[] = {
  {"/", "index.html", "text/html; charset=utf-8"},
  {"/assets/app.js", "app.js", "text/javascript; charset=utf-8"},
  {"/assets/style.css", "style.css", "text/css; charset=utf-8"},
};

} // namespace

std::optional<dashboard_asset> dashboard_file(const std::string& path) {
  for (const auto& r : routes) {
    if (path != r.path)
      continue;
    auto body = detail::dashboard_embedded(r.file);
    if (!body)
      return std::nullopt;
    return dashboard_asset{std::string{r.content_type}, std::string{*body}};
  }
  return std::nullopt;
}

} // namespace troupe
