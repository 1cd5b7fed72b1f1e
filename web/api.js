// The gateway's JSON API as the wallet page uses it, and HBAR amounts as exact integers.

export const TINYBARS_PER_HBAR = 100000000n;

// "1.5" -> 150000000n tinybars; null when the text is not a non-negative HBAR amount.
export function parseHbar(text) {
  const m = /^\s*(\d{1,11})(?:\.(\d{0,8}))?\s*$/.exec(String(text));
  if (!m) return null;
  return BigInt(m[1]) * TINYBARS_PER_HBAR + BigInt((m[2] || "").padEnd(8, "0"));
}

// 150000000 -> "1.5"
export function formatHbar(tinybars) {
  const t = BigInt(tinybars);
  const whole = t / TINYBARS_PER_HBAR;
  const frac = (t % TINYBARS_PER_HBAR).toString().padStart(8, "0").replace(/0+$/, "");
  return frac ? `${whole}.${frac}` : `${whole}`;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.body = body;
  }
}

async function call(method, path, { body, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers["X-Hedera-Session-Id"] = token;
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export const api = {
  config: () => call("GET", "/api/wallet/config"),
  challenge: (account, paygate) =>
    call("POST", "/api/sessions/challenge", { body: { account_id: account, paygate } }),
  approval: (account, paygate, amount, nonce) =>
    call("POST", "/api/wallet/approval",
      { body: { account_id: account, paygate, amount: String(amount), nonce } }),
  submit: (transaction) => call("POST", "/api/wallet/submit", { body: { transaction } }),
  transaction: (txId) => call("GET", `/api/wallet/transaction/${encodeURIComponent(txId)}`),
  allowance: (account) => call("GET", `/api/wallet/allowance?account=${encodeURIComponent(account)}`),
  activate: (body) => call("POST", "/api/sessions/activate", { body }),
  meter: (token) => call("GET", "/api/wallet/session", { token }),
  refresh: (token) => call("POST", "/api/wallet/session/refresh", { token, body: {} }),
  end: (token) => call("DELETE", "/api/sessions/current", { token }),
};

// A fresh idempotency key per call (a retry of the same call would reuse it).
export function idempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}
