// The HTML paywall's payer: with an injected EIP-1193 wallet (`window.ethereum`), sign the
// x402 `exact` EIP-3009 authorization the 402 asks for, send the request again with it,
// and show the answer and the receipt.

import { connect, injectedWallet, paymentHeader, receiptOf, showTransaction,
  signTransfer } from "./eip1193.js";

const $ = (id) => document.getElementById(id);

function say(text, kind = "info") {
  const el = $("pay-status");
  el.textContent = text;
  el.className = kind;
}

async function pay(challenge, entry) {
  const eth = injectedWallet();
  say("Asking your wallet for an account…");
  let from;
  try {
    from = await connect(eth);
  } catch (err) {
    return say(`The wallet refused to connect: ${err.message}`, "error");
  }
  say(`Waiting for your wallet to sign ${entry.amount} atomic units to ${entry.payTo}…`);
  let signed;
  try {
    signed = await signTransfer(eth, entry, from);
  } catch (err) {
    return say(`The wallet refused to sign: ${err.message}`, "error");
  }
  say("Paying and fetching…");
  const resp = await fetch(location.href, { headers: {
    "PAYMENT-SIGNATURE": paymentHeader(challenge, entry, signed),
    Accept: "application/json, text/plain;q=0.9, */*;q=0.8" } });
  const text = await resp.text();
  $("pay-result").hidden = false;
  $("pay-body").textContent = `${resp.status} ${resp.statusText}\n${text.slice(0, 4000)}`;
  const receipt = receiptOf(resp);
  if (receipt) {
    const line = $("pay-receipt");
    line.textContent = `Receipt: ${receipt.success ? "paid" : "not paid"} on ${receipt.network}, transaction `;
    showTransaction(line, receipt);
  }
  if (resp.ok) say("Paid.", "ok");
  else {
    let why = "";
    try { why = JSON.parse(text).error || ""; } catch (_) { /* not JSON */ }
    say(`The gateway did not accept the payment (${resp.status}${why ? ": " + why : ""}).`, "error");
  }
}

function main() {
  const challenge = JSON.parse($("x402-challenge").textContent);
  const evm = (challenge.accepts || []).filter(
    (e) => e.scheme === "exact" && String(e.network).startsWith("eip155:"));
  const box = $("pay-buttons");
  if (!evm.length) return;
  if (!injectedWallet()) {
    say("To pay from this page, open it in a browser with an Ethereum wallet (EIP-1193).");
    return;
  }
  for (const entry of evm) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `Pay ${entry.amount} atomic units (${entry.extra && entry.extra.name || entry.asset}) on ${entry.network}`;
    b.onclick = () => { b.disabled = true; pay(challenge, entry).finally(() => { b.disabled = false; }); };
    box.append(b);
  }
  say("Your wallet can pay this: choose an option.");
}

main();
