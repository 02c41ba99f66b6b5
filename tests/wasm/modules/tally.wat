;; Six queries one after another, adding up their answers: more than a guest may pause at
;; on the event loop's thread, so the rest of its execution runs in a worker thread.
(module
  (import "flux" "db_query" (func $db_query (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (data (i32.const 16) "{\"sql\":\"SELECT 1\",\"mode\":\"value\"}")
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "handle") (param i32 i32) (result i64)
    (local $i i32) (local $sum i32) (local $out i32)
    (loop $again
      ;; the answer is the JSON number 1: one digit at the block db_query returns
      (local.set $sum (i32.add (local.get $sum) (i32.sub (i32.load8_u (i32.wrap_i64
        (i64.shr_u (call $db_query (i32.const 16) (i32.const 33)) (i64.const 32))))
        (i32.const 48))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 6))))
    (local.set $out (call $alloc (i32.const 1)))
    (i32.store8 (local.get $out) (i32.add (local.get $sum) (i32.const 48)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32)) (i64.const 1))))
