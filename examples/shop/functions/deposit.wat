;; POST /deposit {"user_id": 1} — take a deposit, written by hand in WebAssembly text.
;;
;; A pending order priced by the user's plan (pro 500, free 1000 cents) is inserted, the
;; deposit is charged through the payment provider, and the order is marked paid. Like
;; checkout.py, everything runs in the execution's one transaction: if the charge fails, the
;; order is rolled back with it, and Flux records the attempt.
;;
;; A guest without a JSON parser can still do real work: the input and every answer are
;; spliced, as they are, into the next request, and PostgreSQL reads them as jsonb
;; (%s::jsonb->>'user_id'). Only two bytes are ever inspected: the first of a db_query
;; answer ('n' for null: no such user) and the first digit of the HTTP status, which
;; http_fetch puts first ({"status":200,...}). The ABI is in docs/wasm-abi.md.
;;
;; Texts are NUL-terminated, each in a slot of its own, so they can be edited freely.
(module
  (import "flux" "db_query"   (func $db_query   (param i32 i32) (result i64)))
  (import "flux" "http_fetch" (func $http_fetch (param i32 i32) (result i64)))
  (import "flux" "config"     (func $config     (param i32 i32) (result i64)))
  (import "flux" "now"        (func $now        (result i64)))
  (import "flux" "log"        (func $log        (param i32 i32)))
  (import "flux" "error"      (func $error      (param i32 i32)))

  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 4096))   ;; the bump allocator's next free byte
  (global $mark (mut i32) (i32.const 0))     ;; where the request being built starts

  (data (i32.const 64) "{\"mode\":\"value\",\"sql\":\"INSERT INTO orders (user_id, amount_cents, status) SELECT id, CASE plan WHEN 'pro' THEN 500 ELSE 1000 END, 'pending' FROM users WHERE id = (%s::jsonb->>'user_id')::bigint RETURNING json_build_object('amount', amount_cents, 'currency', 'usd', 'customer', user_id, 'order_id', id)\",\"params\":[\00")
  (data (i32.const 512) "]}\00")
  (data (i32.const 528) "\"payments_url\"\00")
  (data (i32.const 560) "{\"method\":\"POST\",\"url\":\00")
  (data (i32.const 600) "/v1/charges\",\"json\":\00")
  (data (i32.const 640) ",\"timeout\":5}\00")
  (data (i32.const 672) "{\"mode\":\"value\",\"sql\":\"UPDATE orders SET status = 'paid', charge_id = %s::jsonb->'body'->>'id', updated_at = to_timestamp(%s / 1000.0) WHERE id = (%s::jsonb->>'order_id')::bigint RETURNING json_build_object('order_id', id, 'charge_id', charge_id, 'status', status, 'amount_cents', amount_cents)\",\"params\":[\00")
  (data (i32.const 1120) ",\00")
  (data (i32.const 1136) "{\"status\":404,\"code\":\"user_not_found\",\"message\":\"no user with that user_id\"}\00")
  (data (i32.const 1280) "{\"status\":502,\"code\":\"payment_failed\",\"message\":\"the payment provider refused the deposit\"}\00")
  (data (i32.const 1408) "{\"level\":\"info\",\"message\":\"deposit taken\"}\00")

  ;; n bytes at the top of the heap, growing memory when needed; 0 when it cannot grow.
  (func $reserve (param $n i32) (result i32)
    (local $ptr i32) (local $end i32) (local $size i32)
    (local.set $ptr (global.get $top))
    (local.set $end (i32.add (local.get $ptr) (local.get $n)))
    (local.set $size (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $size))
      (then
        (if (i32.eq (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $size))
                                                     (i32.const 65535))
                                            (i32.const 16)))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $top (local.get $end))
    (local.get $ptr))

  ;; The ABI's allocator: the host copies the input and every answer into these blocks.
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (global.set $top (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (call $reserve (local.get $n)))

  ;; -- building a request: $begin, then $put pieces, then $end gives its ptr and len --
  (func $begin (global.set $mark (global.get $top)))

  (func $end (result i32 i32)
    (global.get $mark)
    (i32.sub (global.get $top) (global.get $mark)))

  (func $put (param $src i32) (param $n i32)
    (local $dst i32)
    (local.set $dst (call $reserve (local.get $n)))
    (if (i32.eqz (local.get $dst)) (then unreachable))
    (memory.copy (local.get $dst) (local.get $src) (local.get $n)))

  (func $strlen (param $p i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $i))

  (func $puts (param $p i32) (call $put (local.get $p) (call $strlen (local.get $p))))

  (func $put_packed (param $v i64)
    (call $put (i32.wrap_i64 (i64.shr_u (local.get $v) (i64.const 32))) (i32.wrap_i64 (local.get $v))))

  ;; an unsigned integer in decimal, through a scratch buffer at 1536..1560
  (func $put_u64 (param $v i64)
    (local $p i32)
    (local.set $p (i32.const 1560))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (call $put (local.get $p) (i32.sub (i32.const 1560) (local.get $p))))

  (func $first_byte (param $v i64) (param $at i32) (result i32)
    (i32.load8_u (i32.add (i32.wrap_i64 (i64.shr_u (local.get $v) (i64.const 32))) (local.get $at))))

  (func $fail (param $text i32)
    (call $error (local.get $text) (call $strlen (local.get $text)))
    unreachable)

  (func $handle (export "handle") (param $input i32) (param $len i32) (result i64)
    (local $charge i64) (local $url i64) (local $answer i64) (local $order i64)

    ;; 1. the pending order, priced by plan; its charge request comes back as jsonb
    (call $begin)
    (call $puts (i32.const 64))
    (call $put (local.get $input) (local.get $len))
    (call $puts (i32.const 512))
    (local.set $charge (call $db_query (call $end)))
    (if (i32.eq (call $first_byte (local.get $charge) (i32.const 0)) (i32.const 110)) ;; 'n'ull
      (then (call $fail (i32.const 1136))))

    ;; 2. charge it: POST <payments_url>/v1/charges with that object as the JSON body
    (local.set $url (call $config (i32.const 528) (call $strlen (i32.const 528))))
    (call $begin)
    (call $puts (i32.const 560))
    (call $put (i32.wrap_i64 (i64.shr_u (local.get $url) (i64.const 32)))
               (i32.sub (i32.wrap_i64 (local.get $url)) (i32.const 1))) ;; the URL, open quote
    (call $puts (i32.const 600))
    (call $put_packed (local.get $charge))
    (call $puts (i32.const 640))
    (local.set $answer (call $http_fetch (call $end)))
    (if (i32.ne (call $first_byte (local.get $answer) (i32.const 10)) (i32.const 50)) ;; '2'xx
      (then (call $fail (i32.const 1280))))

    ;; 3. mark it paid with the provider's charge id, at the recorded clock
    (call $begin)
    (call $puts (i32.const 672))
    (call $put_packed (local.get $answer))
    (call $puts (i32.const 1120))
    (call $put_u64 (call $now))
    (call $puts (i32.const 1120))
    (call $put_packed (local.get $charge))
    (call $puts (i32.const 512))
    (local.set $order (call $db_query (call $end)))

    (call $log (i32.const 1408) (call $strlen (i32.const 1408)))
    (local.get $order))
)
