# Script-mode test (cmake -P): install troupe from its build tree into a private
# prefix, build the downstream project in tests/consumer against that prefix only,
# run it and check what it prints. Any failing step stops with its output.
#
# Inputs: TROUPE_BINARY_DIR (a configured troupe build tree), CONSUMER_SOURCE_DIR,
#         WORK_DIR (scratch; wiped first).
cmake_minimum_required(VERSION 3.16)

foreach(_var TROUPE_BINARY_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT ${_var})
    message(FATAL_ERROR "consumer test: pass -D${_var}=...")
  endif()
endforeach()

set(_prefix "${WORK_DIR}/prefix")
set(_build "${WORK_DIR}/build")
set(_expected "consumer ok: It is 21 C in Lyon.")

# Runs a command; on failure stops with the step's name and its whole output.
function(run_step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out
                  ERROR_VARIABLE _out TIMEOUT 500)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "consumer test: ${name} failed (${_rc}):\n${_out}")
  endif()
  message(STATUS "consumer test: ${name}: ok")
  set(step_output "${_out}" PARENT_SCOPE)
endfunction()

# Reads one entry of troupe's CMakeCache.txt into the variable `out`.
function(troupe_cache_entry name out)
  file(STRINGS "${TROUPE_BINARY_DIR}/CMakeCache.txt" _line
       REGEX "^${name}:[A-Z]+=")
  string(REGEX REPLACE "^[^=]*=" "" _value "${_line}")
  set(${out} "${_value}" PARENT_SCOPE)
endfunction()

troupe_cache_entry(CMAKE_GENERATOR _generator)
troupe_cache_entry(CMAKE_CXX_COMPILER _cxx)
troupe_cache_entry(CMAKE_BUILD_TYPE _build_type)
troupe_cache_entry(CCACHE_PROGRAM _ccache)
troupe_cache_entry(TROUPE_BUILD_CLI _with_cli)

# 1. cmake --install installs everything the build tree built: make sure that
#    exists (a no-op after a full build; lets `make troupe && ctest -R install` work).
set(_targets troupe)
if(_with_cli)
  list(APPEND _targets troupe_cli)
endif()
string(JOIN " " _target_names ${_targets})
run_step("build ${_target_names}" "${CMAKE_COMMAND}" --build "${TROUPE_BINARY_DIR}"
         --target ${_targets})

# 2. Install into a fresh prefix.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
run_step("install" "${CMAKE_COMMAND}" --install "${TROUPE_BINARY_DIR}" --prefix
         "${_prefix}")
if(NOT EXISTS "${_prefix}/include/troupe/messages/type_ids.hpp")
  message(FATAL_ERROR "consumer test: headers missing from "
                      "${_prefix}/include/troupe:\n${step_output}")
endif()
if(_with_cli AND NOT EXISTS "${_prefix}/bin/troupe")
  message(FATAL_ERROR "consumer test: ${_prefix}/bin/troupe was not installed")
endif()

# 3. Configure the consumer in a fresh build dir with the same toolchain, finding
#    troupe through the prefix only (no user package registry).
set(_configure
    "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${_build}" -G
    "${_generator}" "-DCMAKE_PREFIX_PATH=${_prefix}"
    "-DCMAKE_CXX_COMPILER=${_cxx}" "-DCMAKE_BUILD_TYPE=${_build_type}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_EXPORT_COMPILE_COMMANDS=ON)
if(_ccache)
  list(APPEND _configure "-DCMAKE_CXX_COMPILER_LAUNCHER=${_ccache}")
endif()
run_step("configure consumer" ${_configure})

file(STRINGS "${_build}/CMakeCache.txt" _troupe_dir REGEX "^troupe_DIR:")
string(FIND "${_troupe_dir}" "=${_prefix}/" _at)
if(_at EQUAL -1)
  message(FATAL_ERROR "consumer test: found troupe outside ${_prefix}: "
                      "${_troupe_dir}")
endif()

# 4. Build it.
run_step("build consumer" "${CMAKE_COMMAND}" --build "${_build}")

# The consumer must see troupe's headers from the prefix, never from the source
# tree: the only include dir holding messages/type_ids.hpp is the installed one.
file(READ "${_build}/compile_commands.json" _commands)
string(REGEX MATCHALL "(-I|-isystem )[^ \"]+" _flags "${_commands}")
get_filename_component(_prefix_include "${_prefix}/include/troupe" REALPATH)
set(_saw_prefix OFF)
foreach(_flag IN LISTS _flags)
  string(REGEX REPLACE "^(-I|-isystem )" "" _dir "${_flag}")
  get_filename_component(_dir "${_dir}" REALPATH)
  if(_dir STREQUAL _prefix_include)
    set(_saw_prefix ON)
  elseif(EXISTS "${_dir}/messages/type_ids.hpp")
    message(FATAL_ERROR "consumer test: consumer compiled against troupe "
                        "headers outside the install prefix: ${_dir}")
  endif()
endforeach()
if(NOT _saw_prefix)
  message(FATAL_ERROR "consumer test: ${_prefix}/include/troupe is not on the "
                      "consumer's include path:\n${_commands}")
endif()

# 5. Run it and check its output.
run_step("run consumer" "${_build}/consumer")
string(FIND "${step_output}" "${_expected}" _at)
if(_at EQUAL -1)
  message(FATAL_ERROR "consumer test: expected '${_expected}' in the output:\n"
                      "${step_output}")
endif()
message(STATUS "consumer test: passed (${_expected})")
