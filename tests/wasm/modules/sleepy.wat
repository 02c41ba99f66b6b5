;; Waits on a query that outlasts its timeout (sleepy.toml): the guest is paused at
;; db_query when its time runs out.
(module
  (import "flux" "db_query" (func $db_query (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 256) "{\"sql\":\"SELECT pg_sleep(5)\",\"mode\":\"execute\"}")
  (data (i32.const 512) "{}")
  (global $top (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "handle") (param i32 i32) (result i64)
    (drop (call $db_query (i32.const 256) (i32.const 45)))
    (i64.or (i64.shl (i64.const 512) (i64.const 32)) (i64.const 2))))
