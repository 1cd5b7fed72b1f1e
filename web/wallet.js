// The wallet page: connect a Hedera wallet, approve an HBAR allowance to the gateway,
// open a session, watch the meter, call the paygate, top up, revoke, end.
//
// The page never builds what it signs: the gateway prepares the approval transaction and
// the challenge message; the wallet signs them as they are (see signers.js).

import { api, ApiError, formatHbar, idempotencyKey, parseHbar } from "./api.js";
import { devSigner, injectedSigner, walletConnectSigner } from "./signers.js";

const $ = (id) => document.getElementById(id);
const MIRROR_CHECKS = 90; // about 90 s of "waiting for the network"
const METER_EVERY_MS = 2000;

const state = { config: null, signer: null, account: null, token: null, meterTimer: null };

// -- messages ------------------------------------------------------------------------------

function say(text, kind = "info") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}

function progress(value, max) {
  const bar = $("progress");
  if (value === null) { bar.hidden = true; return; }
  bar.hidden = false;
  bar.max = max;
  bar.value = value;
}

function explain(err) {
  if (err instanceof ApiError) {
    const known = {
      allowance_too_small: "The allowance is below the price of one call: ",
      allowance_missing: "No allowance to the gateway yet: ",
      nonce_expired: "The activation expired before it finished; start again. ",
      mirror_unavailable: "The network's mirror node is unavailable; try again shortly. ",
      network_unavailable: "The Hedera network could not be reached; try again shortly. ",
      rate_limited: "Too many attempts; wait a minute. ",
    }[err.code] || "";
    return known + err.message;
  }
  return String((err && err.message) || err);
}

// -- paygate and amounts ----------------------------------------------------------------------

function paygate() {
  return state.config.paygates.find((p) => p.id === $("paygate").value) || null;
}

function unitPrice() {
  const pg = paygate();
  return pg ? BigInt(pg.unit_price_tinybars) : 0n;
}

function showAllowance() {
  const pg = paygate();
  if (!pg) return;
  const price = unitPrice();
  const rules = pg.rules.map((r) => `${r.method} ${r.path}: ${r.units} unit(s)`).join("; ");
  $("paygate-info").textContent =
    `${pg.description || pg.id} at ${pg.prefix || "/"}: ${formatHbar(price)} HBAR per unit` +
    (rules ? ` (${rules}; other calls ${pg.default_units})` : "");
  const amount = parseHbar($("allowance").value);
  $("allowance-info").textContent = amount === null ? "Enter an amount in HBAR, e.g. 2.5"
    : `${formatHbar(amount)} HBAR = ${price ? amount / price : 0n} calls of one unit`;
  updateButtons();
}

function updateButtons() {
  const ready = !!(state.signer && paygate());
  $("approve-activate").disabled = !ready;
  $("activate-signature").disabled = !ready;
}

// -- connecting -----------------------------------------------------------------------------

function connected(signer, how) {
  const wanted = new URLSearchParams(location.search).get("account");
  state.signer = signer;
  state.account = signer.accountId;
  $("account-line").textContent = `Connected: ${signer.accountId} (${how})`;
  if (wanted && wanted !== signer.accountId) {
    say(`The link was for account ${wanted}, but the wallet connected ${signer.accountId}.`, "error");
  } else {
    say(`Connected ${signer.accountId}. Choose an allowance and open a session.`, "ok");
  }
  updateButtons();
}

async function connectWalletConnect() {
  const id = state.config.walletconnect_project_id;
  if (!id) {
    showWalletConnectHelp();
    say("WalletConnect is not set up on this gateway (no project id).", "error");
    return;
  }
  try {
    say("Open your wallet to approve the connection…");
    connected(await walletConnectSigner(id, state.config.network), "WalletConnect");
  } catch (err) {
    say(`The wallet did not connect: ${explain(err)}`, "error");
  }
}

function showWalletConnectHelp() {
  const help = $("walletconnect-help");
  help.hidden = false;
  help.textContent = "WalletConnect needs a project id: create one free at https://cloud.reown.com " +
    "and set walletconnect_project_id under [wallet] in the gateway's config file.";
}

// -- signing and submitting an approval ---------------------------------------------------------

async function signAndSubmit(prepared, what) {
  say(`Waiting for your wallet to sign the ${what}…`);
  let signed;
  try {
    signed = await state.signer.signTransaction(prepared.transaction);
  } catch (err) {
    throw new Error(`The wallet refused to sign the ${what}: ${explain(err)}`);
  }
  say(`Submitting the ${what} to the network…`);
  let result;
  try {
    result = await api.submit(signed);
  } catch (err) {
    if (err instanceof ApiError && err.status === 422) {
      throw new Error(`The network refused the ${what}: ${err.body.status}`);
    }
    throw err;
  }
  await waitForMirror(result.transaction_id);
  return result;
}

async function waitForMirror(txId) {
  for (let i = 1; i <= MIRROR_CHECKS; i++) {
    let seen = null;
    try {
      seen = await api.transaction(txId);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 502) throw err;
    }
    if (seen && seen.found) {
      progress(null);
      if (seen.result !== "SUCCESS") throw new Error(`The approval ended ${seen.result}.`);
      return;
    }
    say(`Waiting for the network… the mirror node does not show the approval yet (check ${i} of ${MIRROR_CHECKS}).`);
    progress(i, MIRROR_CHECKS);
    await new Promise((r) => setTimeout(r, 1000));
  }
  progress(null);
  throw new Error("The network has not shown the approval after a minute and a half; " +
    "look it up in your wallet, then try again.");
}

// -- opening a session ------------------------------------------------------------------------

async function approveAndActivate() {
  const amount = parseHbar($("allowance").value);
  const pg = paygate();
  if (amount === null) return say("Enter the allowance in HBAR, e.g. 2.5", "error");
  if (amount < unitPrice()) {
    return say(`The allowance (${formatHbar(amount)} HBAR) is below the price of one call ` +
      `(${formatHbar(unitPrice())} HBAR).`, "error");
  }
  await busy(async () => {
    const ch = await api.challenge(state.account, pg.id);
    const prepared = await api.approval(state.account, pg.id, amount, ch.nonce);
    const sent = await signAndSubmit(prepared, "approval");
    say("Approved. Opening the session…");
    const opened = await api.activate({ account_id: state.account, paygate: pg.id,
      nonce: ch.nonce, transaction_id: sent.transaction_id });
    startSession(opened.token, pg.id);
    say(`Session open: ${formatHbar(amount)} HBAR approved to ${prepared.spender}.`, "ok");
  });
}

async function activateWithSignature() {
  const pg = paygate();
  await busy(async () => {
    const ch = await api.challenge(state.account, pg.id);
    say("Waiting for your wallet to sign the gateway's message…");
    let signature;
    try {
      signature = await state.signer.signMessage(ch.message);
    } catch (err) {
      throw new Error(`The wallet refused to sign the message: ${explain(err)}`);
    }
    const opened = await api.activate({ account_id: state.account, paygate: pg.id,
      nonce: ch.nonce, signature });
    startSession(opened.token, pg.id);
    say("Session open on your current allowance.", "ok");
  });
}

async function busy(work) {
  const buttons = document.querySelectorAll("button");
  buttons.forEach((b) => { b.dataset.wasDisabled = b.disabled; b.disabled = true; });
  try {
    await work();
  } catch (err) {
    progress(null);
    say(explain(err), "error");
  } finally {
    buttons.forEach((b) => { b.disabled = b.dataset.wasDisabled === "true"; });
  }
}

// -- the session ------------------------------------------------------------------------------

function startSession(token, paygateId) {
  state.token = token;
  sessionStorage.setItem(`tollgate-session:${paygateId}`, token);
  $("session-section").hidden = false;
  $("token").value = token;
  const pg = paygate();
  const url = `${location.origin}${pg.prefix || ""}${$("call-path").value}`;
  $("curl-line").textContent =
    `curl -H 'X-Hedera-Session-Id: ${token}' -H "Idempotency-Key: $(uuidgen)" ${url}`;
  $("pay-line").textContent = `tollgate pay --session ${token} ${url}`;
  clearInterval(state.meterTimer);
  state.meterTimer = setInterval(() => refreshMeter().catch(() => {}), METER_EVERY_MS);
  return refreshMeter();
}

async function refreshMeter() {
  if (!state.token) return;
  let data;
  try {
    data = await api.meter(state.token);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      stopSession("This session is unknown to the gateway; open a new one.");
    }
    return;
  }
  renderMeter(data);
}

const STATE_TEXT = {
  active: "active",
  exhausted: "exhausted: top up to keep calling",
  revoked: "revoked: the allowance is gone, the session has ended",
  expired: "expired: open a new session",
  ended: "ended",
};

function renderMeter(data) {
  const s = data.session;
  $("m-state").textContent = STATE_TEXT[s.state] || s.state;
  $("m-remaining").textContent = `${formatHbar(s.remaining)} HBAR` +
    (data.unit_price_tinybars ? ` (${BigInt(s.remaining) / BigInt(data.unit_price_tinybars)} calls)` : "");
  $("m-spent").textContent = `${formatHbar(s.spent)} HBAR`;
  $("m-calls").textContent = String(s.calls);
  $("m-expires").textContent = new Date(s.expires_at * 1000).toLocaleString();
  list($("charges"), data.charges.map((c) =>
    `${formatHbar(c.amount)} HBAR at ${new Date(c.at * 1000).toLocaleTimeString()}` +
    (c.status ? ` (answer ${c.status})` : "")), "none yet");
  const pulls = $("pulls");
  pulls.textContent = "";
  for (const p of data.pulls) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = p.link;
    a.target = "_blank";
    a.rel = "noopener";
    a.textContent = p.transaction_id;
    li.append(`${formatHbar(p.amount)} HBAR in `, a);
    pulls.append(li);
  }
  if (!data.pulls.length) list(pulls, [], "nothing yet");
  if (s.state === "expired") say("This session has expired. Open a new one above.", "error");
  if (s.state === "ended" || s.state === "revoked" || s.state === "expired") {
    clearInterval(state.meterTimer);
  }
}

function list(el, items, empty) {
  el.textContent = "";
  for (const text of items.length ? items : [empty]) {
    const li = document.createElement("li");
    li.textContent = text;
    el.append(li);
  }
}

function stopSession(message) {
  clearInterval(state.meterTimer);
  say(message, "error");
}

async function sendCall() {
  const pg = paygate();
  const path = $("call-path").value.startsWith("/") ? $("call-path").value : `/${$("call-path").value}`;
  const resp = await fetch(`${pg.prefix || ""}${path}`, {
    method: $("call-method").value,
    headers: { Accept: "application/json", "X-Hedera-Session-Id": state.token,
      "Idempotency-Key": idempotencyKey() },
  });
  const text = await resp.text();
  let line = `${resp.status} ${resp.statusText}`;
  const left = resp.headers.get("X-Tollgate-Remaining");
  if (left !== null) line += `, remaining ${formatHbar(left)} HBAR`;
  if (resp.status === 402) {
    let body = {};
    try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
    const why = { session_expired: "This session has expired. Open a new one above.",
      session_revoked: "The allowance was revoked: this session has ended.",
      session_exhausted: "The allowance left does not cover this call: top up." }[body.error];
    say(why || body.message || "Payment required.", "error");
  }
  $("call-result").textContent = `${line}\n${text.slice(0, 2000)}`;
  await refreshMeter();
}

async function topUp() {
  const extra = parseHbar($("topup").value);
  if (extra === null || extra <= 0n) return say("Enter the top-up in HBAR, e.g. 1", "error");
  await busy(async () => {
    const now = await api.allowance(state.account);
    const total = BigInt(now.amount) + extra;
    const prepared = await api.approval(state.account, paygate().id, total);
    await signAndSubmit(prepared, "top-up");
    await api.refresh(state.token);
    await refreshMeter();
    say(`Topped up: the allowance is now ${formatHbar(total)} HBAR.`, "ok");
  });
}

async function revoke() {
  await busy(async () => {
    const prepared = await api.approval(state.account, paygate().id, 0);
    await signAndSubmit(prepared, "revocation");
    const after = await api.refresh(state.token);
    await refreshMeter();
    say(after.session.state === "revoked" ? "Allowance revoked: the session has ended."
      : "Allowance set to 0.", "ok");
  });
}

async function endSession() {
  await busy(async () => {
    await api.end(state.token);
    await refreshMeter();
    sessionStorage.removeItem(`tollgate-session:${paygate().id}`);
    say("Session ended. The allowance stays until you revoke it.", "ok");
  });
}

// -- start ------------------------------------------------------------------------------------

async function main() {
  try {
    state.config = await api.config();
  } catch (err) {
    return say(`The gateway did not answer: ${explain(err)}`, "error");
  }
  const cfg = state.config;
  $("network").textContent = cfg.network || "no Hedera network";
  if (!cfg.sessions || !cfg.paygates.length) {
    return say("This gateway has no paygate with Hedera sessions.", "error");
  }
  for (const pg of cfg.paygates) {
    const opt = document.createElement("option");
    opt.value = pg.id;
    opt.textContent = pg.description ? `${pg.id}: ${pg.description}` : pg.id;
    $("paygate").append(opt);
  }
  const params = new URLSearchParams(location.search);
  if (params.get("paygate") && cfg.paygates.some((p) => p.id === params.get("paygate"))) {
    $("paygate").value = params.get("paygate");
  }
  if (!cfg.walletconnect_project_id) showWalletConnectHelp();
  if (injectedSigner()) $("connect-injected").hidden = false;
  if (cfg.dev_signer && cfg.network === "hedera:devnet") {
    $("dev-signer").hidden = false;
    for (const a of cfg.dev_signer.accounts) {
      const opt = document.createElement("option");
      opt.value = a.account_id;
      opt.textContent = `${a.name} (${a.account_id})`;
      $("dev-account").append(opt);
    }
    if (params.get("account")) $("dev-account").value = params.get("account");
  }
  $("connect-walletconnect").onclick = connectWalletConnect;
  $("connect-injected").onclick = () => {
    const s = injectedSigner();
    if (s) connected(s, "browser wallet");
  };
  $("connect-dev").onclick = () => connected(devSigner($("dev-account").value), "devnet demo signer");
  $("paygate").onchange = showAllowance;
  $("allowance").oninput = showAllowance;
  $("approve-activate").onclick = approveAndActivate;
  $("activate-signature").onclick = activateWithSignature;
  $("call").onclick = () => sendCall().catch((err) => say(explain(err), "error"));
  $("do-topup").onclick = topUp;
  $("do-revoke").onclick = revoke;
  $("do-end").onclick = endSession;
  $("copy-token").onclick = () => navigator.clipboard.writeText(state.token).then(
    () => say("Token copied.", "ok"), () => $("token").select());
  showAllowance();
  const saved = sessionStorage.getItem(`tollgate-session:${$("paygate").value}`);
  if (saved) await startSession(saved, $("paygate").value);
  if (!state.signer) {
    say(params.get("account") ? `Connect the wallet of ${params.get("account")} to go on.`
      : "Connect a wallet to start.");
  }
  document.body.dataset.ready = "true";
}

main();
