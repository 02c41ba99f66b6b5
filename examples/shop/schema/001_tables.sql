-- Tables of the example shop. Idempotent, so applying schema/ again is harmless.
-- Constraints carry explicit names: they appear in error messages, and `flux why`
-- reports a constraint failure by SQLSTATE and constraint name.
-- (No '%' anywhere in this file: it may be sent through a driver that treats '%' as a
-- placeholder.)

CREATE TABLE IF NOT EXISTS users (
    id         bigserial   PRIMARY KEY,
    email      text        NOT NULL
                           CONSTRAINT users_email_key UNIQUE
                           CONSTRAINT users_email_check CHECK (strpos(email, '@') > 0),
    plan       text        NOT NULL DEFAULT 'free',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS orders (
    id           bigserial   PRIMARY KEY,
    user_id      bigint      NOT NULL CONSTRAINT orders_user_id_fkey REFERENCES users (id),
    amount_cents integer     NOT NULL CONSTRAINT orders_amount_cents_check CHECK (amount_cents > 0),
    status       text        NOT NULL DEFAULT 'pending'
                             CONSTRAINT orders_status_check
                             CHECK (status IN ('pending', 'paid', 'failed', 'shipped', 'refunded')),
    charge_id    text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Postgres does not index the referencing side of a foreign key by itself.
CREATE INDEX IF NOT EXISTS orders_user_id_idx ON orders (user_id);

-- One row per provider event: the provider's event id is the key, so a duplicate
-- delivery of the same event collides with the primary key.
CREATE TABLE IF NOT EXISTS webhook_events (
    id          text        PRIMARY KEY,
    type        text        NOT NULL,
    payload     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
