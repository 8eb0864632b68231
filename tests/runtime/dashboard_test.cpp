#include "runtime/dashboard.hpp"

#include <catch2/catch.hpp>

#include <string>

#include "support/paths.hpp"
#include "support/process.hpp"

using troupe::dashboard_file;

namespace {

std::string source(const std::string& name) {
  auto text = troupe::test::read_file(troupe::test::source_dir() + "/runtime/dashboard/" + name);
  REQUIRE_FALSE(text.empty());
  return text;
}

} // namespace

TEST_CASE("dashboard: the page, its script and style sheet are the source files, "
          "byte for byte, with their content types",
          "[dashboard]") {
  struct expected {
    const char* path;
    const char* file;
    const char* type;
  };
  for (const auto& e : {expected{"/", "index.html", "text/html; charset=utf-8"},
                        expected{"/assets/app.js", "app.js",
                                 "text/javascript; charset=utf-8"},
                        expected{"/assets/style.css", "style.css",
                                 "text/css; charset=utf-8"}}) {
    INFO(e.path);
    auto f = dashboard_file(e.path);
    REQUIRE(f);
    CHECK(f->content_type == e.type);
    CHECK(f->body == source(e.file));
  }
}

TEST_CASE("dashboard: the page loads its script and style sheet from the paths "
          "served, and nothing from elsewhere",
          "[dashboard]") {
  auto page = dashboard_file("/");
  REQUIRE(page);
  CHECK_THAT(page->body, Catch::Contains("src=\"/assets/app.js\"")
                           && Catch::Contains("href=\"/assets/style.css\""));
  // The machine the dashboard runs on may be offline: no CDN, no fonts.
  for (const char* path : {"/", "/assets/app.js", "/assets/style.css"}) {
    INFO(path);
    auto f = dashboard_file(path);
    REQUIRE(f);
    CHECK_THAT(f->body, !Catch::Contains("http://") && !Catch::Contains("https://")
                          && !Catch::Contains("@import"));
  }
}

TEST_CASE("dashboard: any other path is not a dashboard file", "[dashboard]") {
  for (const char* path :
       {"", "/index.html", "index.html", "/assets/", "/assets", "/assets/index.html",
        "/assets/app.js/", "/assets/APP.JS", "/assets/./app.js", "/assets/../app.js",
        "/assets//app.js", "/assets/app.js?v=1", "/assets/app.js%00", "//",
        "/../runtime/dashboard/app.js", "/dashboard/app.js"}) {
    INFO("path '" << path << "'");
    CHECK_FALSE(dashboard_file(path));
  }
}
