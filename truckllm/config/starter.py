"""The starter config `truckllm init` writes: serves as is, no environment needed."""

STARTER_CONFIG = """\
# TruckLLM config. Reference: docs/configuration.md
version: 1

server:
  host: 127.0.0.1
  port: 8080
  log_format: console          # json for machines, console for humans

providers:
  # Built in: deterministic answers, no network, no credentials.
  - id: demo
    type: mock
    chunk_delay_ms: 20         # pace streamed chunks so streaming is visible

  # A real provider reads its key from the environment. Uncomment, then
  # export OPENAI_API_KEY=sk-... before `truckllm serve`.
  # - id: openai
  #   type: openai
  #   keys:
  #     - id: main
  #       value: ${OPENAI_API_KEY}

models:
  - alias: demo                 # the model name clients send
    targets:
      - {provider: demo, model: mock-1}
  # - alias: "openai/*"         # openai/gpt-4o-mini -> gpt-4o-mini at OpenAI
  #   targets: [{provider: openai, model: "*"}]

# Client keys. Without this section the API is open (fine on localhost).
# Make one with `truckllm keys new` and paste its sha256: form here.
# keys:
#   - id: me
#     key: "sha256:..."
"""
