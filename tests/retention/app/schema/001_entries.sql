CREATE TABLE entries (id bigserial PRIMARY KEY, account text NOT NULL, cents integer NOT NULL
                      CHECK (cents <> 0));
