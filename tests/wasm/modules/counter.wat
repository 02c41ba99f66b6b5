;; Counts its calls in a global and in a byte of its memory, and answers both counts:
;; {"global":1,"memory":1} on every call when no state survives from one call to the next.
(module
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 256) "{\"global\":0,\"memory\":0}")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "handle") (param i32 i32) (result i64)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store8 (i32.const 100) (i32.add (i32.load8_u (i32.const 100)) (i32.const 1)))
    (i32.store8 (i32.const 266) (i32.add (i32.const 48) (global.get $calls)))
    (i32.store8 (i32.const 277) (i32.add (i32.const 48) (i32.load8_u (i32.const 100))))
    (i64.or (i64.shl (i64.const 256) (i64.const 32)) (i64.const 23))))
