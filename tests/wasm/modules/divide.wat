;; Traps in a named function: handle divides by zero in $divide.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func $divide (param $a i32) (param $b i32) (result i32)
    (i32.div_u (local.get $a) (local.get $b)))
  (func $handle (export "handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.extend_i32_u (call $divide (local.get $len) (i32.const 0)))))
