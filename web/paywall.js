// The HTML paywall's payer: with an injected EIP-1193 wallet (`window.ethereum`), sign the
// x402 `exact` EIP-3009 authorization the 402 asks for, send the request again with it,
// and show the answer and the receipt.

const $ = (id) => document.getElementById(id);
const EXPLORERS = {
  "eip155:8453": "https://basescan.org/tx/",
  "eip155:84532": "https://sepolia.basescan.org/tx/",
  "eip155:1": "https://etherscan.io/tx/",
  "eip155:11155111": "https://sepolia.etherscan.io/tx/",
};
const V1_ONLY = ["maxAmountRequired", "resource", "description", "mimeType"];

function b64json(obj) {
  const bytes = new TextEncoder().encode(JSON.stringify(obj));
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function unb64json(text) {
  const bin = atob(text);
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
}

function randomNonce() {
  const b = crypto.getRandomValues(new Uint8Array(32));
  return "0x" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function say(text, kind = "info") {
  const el = $("pay-status");
  el.textContent = text;
  el.className = kind;
}

export function typedData(entry, from, now) {
  const chainId = Number(entry.network.split(":")[1]);
  return {
    types: {
      EIP712Domain: [
        { name: "name", type: "string" }, { name: "version", type: "string" },
        { name: "chainId", type: "uint256" }, { name: "verifyingContract", type: "address" },
      ],
      TransferWithAuthorization: [
        { name: "from", type: "address" }, { name: "to", type: "address" },
        { name: "value", type: "uint256" }, { name: "validAfter", type: "uint256" },
        { name: "validBefore", type: "uint256" }, { name: "nonce", type: "bytes32" },
      ],
    },
    primaryType: "TransferWithAuthorization",
    domain: { name: entry.extra.name, version: entry.extra.version, chainId,
      verifyingContract: entry.asset },
    message: {
      from, to: entry.payTo, value: String(entry.amount),
      validAfter: String(Math.max(0, now - 600)),
      validBefore: String(now + (entry.maxTimeoutSeconds || 60)),
      nonce: randomNonce(),
    },
  };
}

async function pay(challenge, entry) {
  const eth = window.ethereum;
  say("Asking your wallet for an account…");
  let from;
  try {
    [from] = await eth.request({ method: "eth_requestAccounts" });
  } catch (err) {
    return say(`The wallet refused to connect: ${err.message || err}`, "error");
  }
  const data = typedData(entry, from, Math.floor(Date.now() / 1000));
  say(`Waiting for your wallet to sign ${entry.amount} atomic units to ${entry.payTo}…`);
  let signature;
  try {
    signature = await eth.request({ method: "eth_signTypedData_v4",
      params: [from, JSON.stringify(data)] });
  } catch (err) {
    return say(`The wallet refused to sign: ${err.message || err}`, "error");
  }
  const accepted = Object.fromEntries(Object.entries(entry).filter(([k]) => !V1_ONLY.includes(k)));
  const header = b64json({ x402Version: 2, resource: challenge.resource, accepted,
    payload: { signature, authorization: data.message }, extensions: {} });
  say("Paying and fetching…");
  const resp = await fetch(location.href, { headers: { "PAYMENT-SIGNATURE": header,
    Accept: "application/json, text/plain;q=0.9, */*;q=0.8" } });
  const text = await resp.text();
  $("pay-result").hidden = false;
  $("pay-body").textContent = `${resp.status} ${resp.statusText}\n${text.slice(0, 4000)}`;
  const receiptHeader = resp.headers.get("PAYMENT-RESPONSE") || resp.headers.get("X-PAYMENT-RESPONSE");
  if (receiptHeader) {
    const receipt = unb64json(receiptHeader);
    const line = $("pay-receipt");
    line.textContent = `Receipt: ${receipt.success ? "paid" : "not paid"} on ${receipt.network}, transaction `;
    const tx = receipt.transaction || "(pending)";
    const base = EXPLORERS[receipt.network];
    if (base && receipt.transaction) {
      const a = document.createElement("a");
      a.href = base + tx;
      a.textContent = tx;
      a.rel = "noopener";
      line.append(a);
    } else {
      const code = document.createElement("code");
      code.textContent = tx;
      line.append(code);
    }
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
  if (!window.ethereum) {
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
