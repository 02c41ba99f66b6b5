"""runtime: one function run as one recorded execution — the HTTP gateway, the executor,
the Runtime (pools, policies, functions), the loader, the execution and its context, the ctx
doors (db, http), the recorder, redaction, sampling, tenants, admin access, OpenTelemetry, and
request bodies; Wasm functions in runtime/wasm.

May import: capture, store and the ground floor; of inspect only the failure signature (a failed
record carries it). Never replay, jobs or server (above it)."""
