-- pgbench: the activation's core and the release as plain SQL, the ceiling for benchmarks/engine_api.py.
-- Variables (-D): pool0 npools machine user. One transaction of this script is one cycle.
\set pool :pool0 + random(0, :npools - 1)
BEGIN;
SELECT quota FROM licenses_licensepool WHERE id = :pool FOR UPDATE;
SELECT count(*) FROM sessions_app_enginesession WHERE pool_id = :pool AND ended_at IS NULL AND lease_expires_at > now();
INSERT INTO sessions_app_enginesession
    (public_id, pool_id, machine_id, user_id, hostname, engine_version, started_at, last_heartbeat_at, lease_expires_at, end_reason)
    VALUES ('s_' || md5(random()::text), :pool, :machine, :user, '', '', now(), now(), now() + interval '5 minutes', '')
    RETURNING id AS session_id \gset
COMMIT;
UPDATE sessions_app_enginesession SET ended_at = now(), end_reason = 'released' WHERE id = :session_id AND ended_at IS NULL;
