"""PostgreSQL functions of the hot path, created by migration 9 (see store.migrations).

`tollgate_charge_batch` runs a batch of session charges in ONE statement, hence one
transaction and one round trip (see store.pgbatch and sessions.ledger). Each charge is
what `sessions.ledger` documents: the idempotency key claim (the INSERT: a unique
violation means the key is taken), then the money (a conditional UPDATE of the owner's
shared allowance row) and the session's counters, all in a sub-transaction of its own
(the BEGIN ... EXCEPTION block): a charge whose claim does not hold is rolled back alone,
with its key claim, and the others of the batch still commit.

Outcome per input position (`idx`, 1-based): 0 charged (`remaining` = what is left),
1 key taken (look the existing charge up), 2 refused (no money moved, no key claimed).

Lock order: charges are taken by (owner, spender, session id), so two instances' batches
lock allowance rows and session rows in the same order and cannot deadlock each other
(the batch runner retries whole batches on a deadlock anyway).
"""

CHARGE_BATCH = """
CREATE OR REPLACE FUNCTION tollgate_charge_batch(
    p_ids text[], p_sids text[], p_keys text[], p_fps text[], p_amounts bigint[],
    p_fresh double precision[], p_now double precision[], p_low bigint[])
RETURNS TABLE(idx integer, outcome integer, remaining bigint)
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    v_left bigint;
    v_session record;
BEGIN
    FOR r IN
        SELECT t.ord::integer AS k
        FROM unnest(p_sids) WITH ORDINALITY AS t(sid, ord)
        LEFT JOIN sessions s ON s.id = t.sid
        ORDER BY s.owner NULLS FIRST, s.spender, t.sid, t.ord
    LOOP
        BEGIN
            INSERT INTO session_charges (id, session_id, idempotency_key, fingerprint, amount,
                                         state, pull_id, created_at)
            VALUES (p_ids[r.k], p_sids[r.k], p_keys[r.k], p_fps[r.k], p_amounts[r.k],
                    'pending', NULL, p_now[r.k]);
            UPDATE session_allowances a
               SET outstanding = a.outstanding + p_amounts[r.k]
             WHERE (a.owner, a.spender) = (
                       SELECT s.owner, s.spender FROM sessions s
                        WHERE s.id = p_sids[r.k] AND s.state IN ('active', 'exhausted')
                          AND s.expires_at > p_now[r.k])
               AND a.mirror_at > p_fresh[r.k]
               AND a.allowance - a.outstanding >= p_amounts[r.k]
            RETURNING a.allowance - a.outstanding INTO v_left;
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'TG001';
            END IF;
            -- Still conditional: a session ended since the claim above read it is not
            -- charged (the whole sub-transaction rolls back).
            UPDATE sessions
               SET spent = spent + p_amounts[r.k], calls = calls + 1, state = 'active'
             WHERE id = p_sids[r.k] AND state IN ('active', 'exhausted');
            IF NOT FOUND THEN
                RAISE EXCEPTION USING ERRCODE = 'TG001';
            END IF;
            -- `allowance.low` (store.outbox) when what is left fell below a threshold some
            -- webhook endpoint set: written in this sub-transaction, with the charge.
            IF EXISTS (SELECT 1 FROM unnest(p_low) AS t(v)
                        WHERE v_left < t.v AND t.v <= v_left + p_amounts[r.k]) THEN
                SELECT s.paygate_id, s.owner INTO v_session FROM sessions s
                 WHERE s.id = p_sids[r.k];
                INSERT INTO webhook_events (id, type, paygate_id, provider, data, created_at,
                                            fanned_out)
                VALUES ('evt_' || substr(md5(p_ids[r.k] || random()::text), 1, 24),
                        'allowance.low', v_session.paygate_id, NULL,
                        json_build_object('owner', v_session.owner,
                                          'previous', v_left + p_amounts[r.k],
                                          'remaining', v_left,
                                          'session', p_sids[r.k])::text,
                        p_now[r.k], 0);
            END IF;
            idx := r.k; outcome := 0; remaining := v_left;
            RETURN NEXT;
        EXCEPTION
            WHEN unique_violation THEN
                idx := r.k; outcome := 1; remaining := NULL;
                RETURN NEXT;
            WHEN SQLSTATE 'TG001' THEN
                idx := r.k; outcome := 2; remaining := NULL;
                RETURN NEXT;
        END;
    END LOOP;
END
$fn$
"""

# A batch of x402 payment claims (see chains.payments.PaymentStore.claim): each inserts
# the payment row (a taken claim key or payment identifier: outcome 1); with an exposure
# limit, it then takes the payer's advisory lock (held to the end of the batch's
# transaction) and sums the payer's open payments, its own included; over the limit, its
# insert is rolled back alone (outcome 2). Claims are taken in the order of their lock
# key, so two instances' batches cannot wait on each other's payer locks in a cycle.
# Outcome 0: claimed.
CLAIM_BATCH = """
CREATE OR REPLACE FUNCTION tollgate_claim_batch(
    p_ids text[], p_claim_keys text[], p_identifiers text[], p_fingerprints text[],
    p_rails text[], p_paygates text[], p_networks text[], p_assets text[], p_payers text[],
    p_pay_tos text[], p_amounts text[], p_settlements text[], p_payloads text[],
    p_digests text[], p_clients text[], p_forward_untils double precision[],
    p_valid_befores double precision[], p_limits text[], p_now double precision)
RETURNS TABLE(idx integer, outcome integer)
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
    v_id text;
    v_open numeric;
BEGIN
    FOR r IN
        SELECT t.ord::integer AS k
        FROM unnest(p_ids) WITH ORDINALITY AS t(id, ord)
        ORDER BY hashtext(p_networks[t.ord] || '|' || p_assets[t.ord] || '|' || p_payers[t.ord]),
                 t.ord
    LOOP
        v_id := NULL;
        BEGIN
            INSERT INTO payments (id, claim_key, payment_identifier, request_fingerprint, rail,
                                  paygate_id, network, asset, payer, pay_to, amount, state,
                                  settlement, payload, tx_hash, error, attempts, lease_until,
                                  created_at, updated_at, request_digest, forward_until,
                                  client_digest, valid_before)
            VALUES (p_ids[r.k], p_claim_keys[r.k], p_identifiers[r.k], p_fingerprints[r.k],
                    p_rails[r.k], p_paygates[r.k], p_networks[r.k], p_assets[r.k],
                    p_payers[r.k], p_pay_tos[r.k], p_amounts[r.k]::numeric, 'verified',
                    p_settlements[r.k], p_payloads[r.k], NULL, NULL, 0, NULL, p_now, p_now,
                    p_digests[r.k], p_forward_untils[r.k], p_clients[r.k],
                    p_valid_befores[r.k])
            ON CONFLICT DO NOTHING
            RETURNING id INTO v_id;
            IF v_id IS NULL THEN
                idx := r.k; outcome := 1;
                RETURN NEXT;
                CONTINUE;
            END IF;
            IF p_limits[r.k] IS NOT NULL THEN
                PERFORM pg_advisory_xact_lock(hashtext(
                    p_networks[r.k] || '|' || p_assets[r.k] || '|' || p_payers[r.k]));
                SELECT coalesce(sum(amount), 0) INTO v_open FROM payments
                 WHERE network = p_networks[r.k] AND asset = p_assets[r.k]
                   AND payer = p_payers[r.k]
                   AND state IN ('verified', 'queued', 'settling', 'unknown');
                IF v_open > p_limits[r.k]::numeric THEN
                    RAISE EXCEPTION USING ERRCODE = 'TG002';
                END IF;
            END IF;
            idx := r.k; outcome := 0;
            RETURN NEXT;
        EXCEPTION
            WHEN SQLSTATE 'TG002' THEN
                idx := r.k; outcome := 2;
                RETURN NEXT;
        END;
    END LOOP;
END
$fn$
"""

FUNCTIONS = (CHARGE_BATCH, CLAIM_BATCH)
