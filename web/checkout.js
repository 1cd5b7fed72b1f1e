// The checkout page's buyer. A paid plan: connect the injected EIP-1193 wallet, put it on
// the plan's chain, fetch the plan's 402 from `POST /api/checkout/{paygate}/{plan}`, have
// the wallet sign the EIP-3009 transfer that 402 asks for, send it as the x402 payment and
// show the token. A free plan: post the email. With a token pasted in the top-up field,
// both requests carry it as `Authorization: Bearer` and the gateway adds the units to it.
// Every refusal (no wallet, wrong chain, a "no" in the wallet, the gateway's 4xx) is said
// on the page and stops there: nothing is paid unless the wallet signed and the gateway
// accepted.

import { USER_REJECTED, UNKNOWN_CHAIN, WalletError, connect, ensureChain, injectedWallet,
  paymentHeader, receiptOf, showTransaction, signTransfer } from "./eip1193.js";

const $ = (id) => document.getElementById(id);
const DATA = JSON.parse($("checkout-data").textContent);
const NOTHING_PAID = "Nothing was paid.";

function say(text, kind = "info") {
  const el = $("checkout-status");
  el.textContent = text;
  el.className = kind;
}

// Thrown for a refusal to show as is.
class Refused extends Error {}

const controls = []; // the buttons this script enabled; one purchase at a time

function busy(on) {
  for (const b of controls) b.disabled = on;
}

function topUpToken() {
  const t = $("topup-token").value.trim();
  if (t && !/^tg_live_[A-Za-z0-9_-]+$/.test(t)) {
    throw new Refused("The token to top up does not look like a Tollgate token (tg_live_…). "
      + NOTHING_PAID);
  }
  return t;
}

function headersFor(token, extra = {}) {
  const h = { Accept: "application/json", ...extra };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function post(url, headers, body) {
  try {
    const resp = await fetch(url, { method: "POST", headers, body, credentials: "omit" });
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    return { resp, data: data || {} };
  } catch (err) {
    throw new Refused(`Could not reach the gateway (${err.message || err}). ${NOTHING_PAID}`);
  }
}

function gatewayRefusal(resp, data, afterSigning) {
  const what = data.error ? `${resp.status} ${data.error}` : `${resp.status}`;
  const why = data.message ? `: ${data.message}` : "";
  const tail = afterSigning ? "No token was issued." : NOTHING_PAID;
  if (resp.status === 401) {
    return new Refused(`The gateway refused the token to top up (${what})${why}. ${tail}`);
  }
  return new Refused(`The gateway refused the ${afterSigning ? "payment" : "request"} `
    + `(${what})${why}. ${tail}`);
}

function walletRefusal(err, offer) {
  if (err.step === "connect") {
    return err.code === USER_REJECTED
      ? `You declined to connect your wallet. ${NOTHING_PAID}`
      : `The wallet did not connect: ${err.message}. ${NOTHING_PAID}`;
  }
  if (err.step === "chain") {
    const net = offer.network;
    if (err.code === UNKNOWN_CHAIN) {
      return `Your wallet does not know the network ${net}: add it to the wallet, then try `
        + `again. ${NOTHING_PAID}`;
    }
    const how = err.code === USER_REJECTED ? "you refused to switch" : err.message;
    return `This plan is paid on ${net} and your wallet is on another network (${how}). `
      + `Switch the wallet to ${net} and try again. ${NOTHING_PAID}`;
  }
  return err.code === USER_REJECTED
    ? `You rejected the signature in your wallet. ${NOTHING_PAID}`
    : `The wallet did not sign: ${err.message}. ${NOTHING_PAID}`;
}

// The accepts entry of the plan's 402 for this offer's network and asset, at the price
// the page showed (the person agreed to that price, not to another one).
function entryFor(challenge, offer) {
  const entry = (challenge.accepts || []).find((e) => e.scheme === "exact"
    && e.network === offer.network
    && String(e.asset).toLowerCase() === offer.address.toLowerCase());
  if (!entry) {
    throw new Refused(`The gateway offered no payment on ${offer.network} for this plan. `
      + NOTHING_PAID);
  }
  if (BigInt(entry.amount) !== BigInt(offer.amount)) {
    throw new Refused(`The gateway asked ${entry.amount} atomic units, not the ${offer.amount} `
      + `this page shows; reload the page. ${NOTHING_PAID}`);
  }
  return entry;
}

async function buy(plan, offer) {
  const token = topUpToken();
  const eth = injectedWallet();
  if (!eth) {
    throw new Refused("No browser wallet found: paying from this page needs an Ethereum "
      + "wallet (EIP-1193) in this browser. Without one, use an x402 client (see under the "
      + `plan). ${NOTHING_PAID}`);
  }
  say("Asking your wallet for an account…");
  const from = await connect(eth);
  say(`Checking that your wallet is on ${offer.network}…`);
  await ensureChain(eth, offer.network);
  say("Asking the gateway what to sign…");
  const first = await post(plan.url, headersFor(token));
  if (first.resp.status !== 402) throw gatewayRefusal(first.resp, first.data, false);
  const entry = entryFor(first.data, offer);
  say(`Sign the payment of ${offer.price} ${offer.asset} in your wallet…`);
  const signed = await signTransfer(eth, entry, from);
  say("Paying…");
  const paid = await post(plan.url, headersFor(token,
    { "PAYMENT-SIGNATURE": paymentHeader(first.data, entry, signed) }));
  if (!paid.resp.ok) throw gatewayRefusal(paid.resp, paid.data, true);
  show(paid.data, token, receiptOf(paid.resp));
}

async function takeFree(plan, form) {
  const email = form.elements.email.value.trim();
  say("Asking for the free token…");
  const got = await post(plan.url, headersFor("", { "Content-Type": "application/json" }),
    JSON.stringify({ email }));
  if (!got.resp.ok) throw gatewayRefusal(got.resp, got.data, false);
  show(got.data, "", null);
}

function show(answer, toppedUp, receipt) {
  $("checkout-result").hidden = false;
  const token = answer.token || toppedUp;
  if (answer.topUp) {
    $("result-summary").textContent = `Topped up token ${answer.tokenId} with plan `
      + `${answer.plan}: ${answer.remaining} units left.`;
  } else {
    $("result-summary").textContent = `Plan ${answer.plan}: ${answer.quotaIncluded} units `
      + `(${answer.billingType}), token ${answer.tokenId}.`;
  }
  $("token-line").hidden = !answer.token;
  $("token").textContent = answer.token || "";
  $("copy-status").textContent = "";
  $("curl-example").textContent = `curl -H "Authorization: Bearer ${token}" ${DATA.callUrl}`;
  const line = $("receipt");
  line.textContent = "";
  if (receipt) {
    line.textContent = `Paid on ${receipt.network}, transaction `;
    showTransaction(line, receipt);
  }
  say(answer.topUp ? "Topped up." : "Bought: your token is below.", "ok");
}

async function run(task) {
  busy(true);
  try {
    await task();
  } catch (err) {
    if (err instanceof Refused) say(err.message, "error");
    else say(`Something went wrong: ${err.message || err}. ${NOTHING_PAID}`, "error");
  } finally {
    busy(false);
  }
}

async function copyToken() {
  const text = $("token").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-status").textContent = "Copied.";
  } catch (_) {
    // No clipboard access (an insecure origin, a refused permission): select it instead.
    const range = document.createRange();
    range.selectNodeContents($("token"));
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    $("copy-status").textContent = "Selected: copy it with Ctrl+C.";
  }
}

function main() {
  const plans = Object.fromEntries(DATA.plans.map((p) => [p.id, p]));
  for (const b of document.querySelectorAll("button.buy")) {
    const plan = plans[b.dataset.plan];
    const offer = plan && plan.offers.find((o) => o.asset === b.dataset.asset && o.kind === "evm");
    if (!offer) continue;
    b.disabled = false;
    controls.push(b);
    b.onclick = () => run(() => buy(plan, offer).catch((err) => {
      throw err instanceof WalletError ? new Refused(walletRefusal(err, offer)) : err;
    }));
  }
  for (const form of document.querySelectorAll("form.free")) {
    const plan = plans[form.dataset.plan];
    if (!plan) continue;
    const submit = form.querySelector("button");
    submit.disabled = false;
    controls.push(submit);
    form.onsubmit = (ev) => { ev.preventDefault(); run(() => takeFree(plan, form)); };
  }
  $("copy-token").onclick = copyToken;
  if (document.querySelector("button.buy") && !injectedWallet()) {
    say("No browser wallet (EIP-1193) found: the Buy buttons need one. Free plans and the "
      + "instructions under each plan work without it.");
  }
}

main();
