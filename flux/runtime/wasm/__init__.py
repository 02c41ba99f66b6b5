"""runtime/wasm: WebAssembly functions — the runner (compile, instantiate, call under the
timeout and memory cap), the host imports (the guest's ctx), and source maps to the guest's
C/Rust lines.

May import: the rest of runtime, capture, store and the ground floor (the runtime rule)."""
