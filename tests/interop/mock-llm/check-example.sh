#!/usr/bin/env bash
# Runs the research example against the mock-llm server that run.sh started
# (with MOCK_LLM_CONFIG=research.yaml) and checks the run end to end:
#
#   MOCK_LLM_CONFIG=research.yaml run.sh <work-dir> bash check-example.sh <research_example>
#
# The example runs with TROUPE_MODEL=openai:mock-model and
# OPENAI_BASE_URL=$MOCK_LLM_BASE_URL in a fresh temporary directory (it writes
# research-trace.jsonl to its working directory), with a fake OPENAI_API_KEY.
# Checked:
#   - it exits 0 and prints "status: complete";
#   - it printed the brief that research.yaml scripts for the synthesizer;
#   - the trace records the model calls as going to openai:mock-model, none
#     to the scripted model, and holds a successful execute_tool span for
#     kv_lookup and for calculator (the tool calls research.yaml makes);
#   - the API key appears nowhere: not in stdout, stderr or the trace.
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 <research_example binary>" >&2
  exit 2
fi
example=$1
[[ -n ${MOCK_LLM_BASE_URL:-} ]] || { echo "check-example: MOCK_LLM_BASE_URL is not set (run me through run.sh)" >&2; exit 2; }
[[ -f $example && -x $example ]] || { echo "check-example: FAILED: $example is not an executable" >&2; exit 1; }
# The example runs in another directory: make its path absolute.
example=$(cd "$(dirname "$example")" && pwd)/$(basename "$example")

# A fake key that must never be printed or traced.
readonly api_key=sk-interop-NOT-A-REAL-KEY-7f3a
# The first line of the synthesizer's brief in research.yaml.
readonly brief='Brief from mock-llm: replace the office gas boiler with a heat pump.'

dir=$(mktemp -d "${TMPDIR:-/tmp}/troupe-research-interop.XXXXXX") || exit 1
# Kept on failure, for a look at the trace.
out=$dir/stdout.txt
err=$dir/stderr.txt
trace=$dir/research-trace.jsonl

failures=0
check() { echo "check-example: ok: $*"; }
fail() { echo "check-example: FAILED: $*"; failures=$((failures + 1)); }

echo "check-example: running $example in $dir against $MOCK_LLM_BASE_URL"
(cd "$dir" && exec env -u ANTHROPIC_API_KEY -u ANTHROPIC_BASE_URL \
    TROUPE_MODEL=openai:mock-model \
    OPENAI_BASE_URL="$MOCK_LLM_BASE_URL" \
    OPENAI_API_KEY="$api_key" \
    timeout 60 "$example") >"$out" 2>"$err"
status=$?

echo "----- stdout -----"; cat "$out"
echo "----- stderr -----"; cat "$err"
echo "------------------"

# 1. Exit status and outcome.
if [[ $status -eq 0 ]]; then check "exit status 0"; else fail "exit status $status (expected 0)"; fi
if grep -q '^status: complete$' "$out"; then
  check "stdout says 'status: complete'"
else
  fail "stdout has no 'status: complete' line"
fi
if grep -qF "$brief" "$out"; then
  check "stdout holds the scripted brief"
else
  fail "stdout lacks the brief research.yaml scripts for the synthesizer: '$brief'"
fi

# 2. The trace.
if [[ ! -s $trace ]]; then
  fail "no trace at $trace"
else
  # Successful execute_tool spans, one JSON object per line.
  for tool in kv_lookup calculator; do
    n=$(grep -F '"gen_ai.operation.name":"execute_tool"' "$trace" |
          grep -F "\"gen_ai.tool.name\":\"$tool\"" |
          grep -F '"troupe.tool.ok":true' |
          grep -cF '"type":"span"')
    if [[ $n -ge 1 ]]; then
      check "trace has $n successful execute_tool span(s) for $tool"
    else
      fail "trace has no successful execute_tool span for $tool"
    fi
  done
  chats=$(grep -F '"gen_ai.operation.name":"chat"' "$trace" |
            grep -cF '"gen_ai.request.model":"openai:mock-model"')
  if [[ $chats -ge 1 ]]; then
    check "trace has $chats chat span(s) for openai:mock-model"
  else
    fail "trace has no chat span with gen_ai.request.model openai:mock-model"
  fi
  if grep -q '"gen_ai.request.model":"scripted:' "$trace"; then
    fail "trace shows calls to the scripted model: TROUPE_MODEL was not honoured"
  else
    check "trace shows no call to the scripted model"
  fi
fi

# 3. The API key leaks nowhere.
for f in "$out" "$err" "$trace"; do
  [[ -e $f ]] || continue
  if grep -qF "$api_key" "$f"; then
    fail "the API key (OPENAI_API_KEY) appears in $(basename "$f"):"
    grep -nF "$api_key" "$f" | cut -c1-300
  else
    check "the API key does not appear in $(basename "$f")"
  fi
done

if [[ $failures -ne 0 ]]; then
  echo "check-example: $failures check(s) FAILED; output and trace kept in $dir"
  exit 1
fi
rm -rf "$dir"
echo "check-example: all checks passed"
