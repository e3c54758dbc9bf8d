-- With the default pgshield_guard.gateway_uid (0, root: the gateway), the
-- postgres OS user's connections may not carry a client: FATAL.
\! perl "$PG_ABS_SRCDIR/regress_client.pl" -p "pgshield_guard.client=v=1&addr=10.77.1.2&port=40001&method=scram-sha-256&key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" -connect -p "pgshield_guard.client=garbage" -connect -connect -q "SELECT client_addr IS NULL, inet_client_addr() IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()"
SET pgshield_guard.bind_client = 'v=1&seq=1&pid=1&addr=6.6.6.6&port=6&method=password&mac=00';
