;; Wants ever more memory: grows a page at a time until refused, then gives up. hog.toml
;; caps it at 2 MiB.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func $hoard (export "handle") (param i32 i32) (result i64)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
