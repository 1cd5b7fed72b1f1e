// Paying x402 `exact` on an EVM network from a browser: an injected EIP-1193 wallet
// (`window.ethereum`) signs the EIP-3009 TransferWithAuthorization that a 402 accepts
// entry asks for, and the payment goes back as the v2 `PAYMENT-SIGNATURE` header
// (PROTOCOLS.md). Shared by the paywall and the checkout page; the keys stay in the wallet.

export const EXPLORERS = {
  "eip155:8453": "https://basescan.org/tx/",
  "eip155:84532": "https://sepolia.basescan.org/tx/",
  "eip155:1": "https://etherscan.io/tx/",
  "eip155:11155111": "https://sepolia.etherscan.io/tx/",
};
// v1 fields the gateway adds to each accepts entry for v1 clients; a v2 `accepted` omits them.
const V1_ONLY = ["maxAmountRequired", "resource", "description", "mimeType"];
export const USER_REJECTED = 4001; // EIP-1193: the person said no
export const UNKNOWN_CHAIN = 4902; // wallet_switchEthereumChain: the wallet lacks that chain

// A step of talking to the wallet failed; `step` says which ("wallet", "connect",
// "chain", "sign"), `code` is the wallet's EIP-1193 error code when it gave one.
export class WalletError extends Error {
  constructor(step, message, code) {
    super(message);
    this.step = step;
    this.code = code;
  }
}

export function b64json(obj) {
  const bytes = new TextEncoder().encode(JSON.stringify(obj));
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function unb64json(text) {
  const bin = atob(text);
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
}

function randomNonce() {
  const b = crypto.getRandomValues(new Uint8Array(32));
  return "0x" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// "eip155:8453" -> "0x2105", the form EIP-1193 wallets speak.
export function chainHex(network) {
  return "0x" + BigInt(String(network).split(":")[1]).toString(16);
}

// The EIP-712 typed data of the transfer `entry` (an x402 `exact` EVM accepts entry) asks
// for, from `from`, valid from ten minutes ago (clock skew) for the entry's timeout.
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

// The wallet the browser injected, or null.
export function injectedWallet() {
  const eth = window.ethereum;
  return eth && typeof eth.request === "function" ? eth : null;
}

function reason(err) {
  return (err && err.message) || String(err);
}

// The account the person lets this page use.
export async function connect(eth) {
  let accounts;
  try {
    accounts = await eth.request({ method: "eth_requestAccounts" });
  } catch (err) {
    throw new WalletError("connect", reason(err), err && err.code);
  }
  if (!Array.isArray(accounts) || !accounts.length) {
    throw new WalletError("connect", "the wallet shared no account");
  }
  return accounts[0];
}

// Makes sure the wallet is on `network` (CAIP-2 "eip155:N"), asking it to switch if not.
export async function ensureChain(eth, network) {
  const want = chainHex(network);
  const current = async () => BigInt(await eth.request({ method: "eth_chainId" }));
  let now;
  try {
    now = await current();
  } catch (err) {
    throw new WalletError("chain", reason(err), err && err.code);
  }
  if (now === BigInt(want)) return;
  try {
    await eth.request({ method: "wallet_switchEthereumChain", params: [{ chainId: want }] });
    now = await current();
  } catch (err) {
    throw new WalletError("chain", reason(err), err && err.code);
  }
  // A wallet that says yes but stays elsewhere would sign for the wrong chain.
  if (now !== BigInt(want)) {
    throw new WalletError("chain", `the wallet is still on eip155:${now}`);
  }
}

// {signature, authorization}: the wallet's eth_signTypedData_v4 of the transfer `entry` asks.
export async function signTransfer(eth, entry, from) {
  const data = typedData(entry, from, Math.floor(Date.now() / 1000));
  let signature;
  try {
    signature = await eth.request({ method: "eth_signTypedData_v4",
      params: [from, JSON.stringify(data)] });
  } catch (err) {
    throw new WalletError("sign", reason(err), err && err.code);
  }
  return { signature, authorization: data.message };
}

// The v2 PAYMENT-SIGNATURE header value for `entry` of the 402 body `challenge`.
export function paymentHeader(challenge, entry, signed) {
  const accepted = Object.fromEntries(Object.entries(entry).filter(([k]) => !V1_ONLY.includes(k)));
  return b64json({ x402Version: 2, resource: challenge.resource, accepted,
    payload: signed, extensions: {} });
}

// The settlement receipt of a paid response, or null.
export function receiptOf(resp) {
  const header = resp.headers.get("PAYMENT-RESPONSE") || resp.headers.get("X-PAYMENT-RESPONSE");
  return header ? unb64json(header) : null;
}

// Appends the receipt's transaction to `line`: an explorer link when the network has one.
export function showTransaction(line, receipt) {
  const tx = receipt.transaction || "(pending)";
  const base = EXPLORERS[receipt.network];
  const el = document.createElement(base && receipt.transaction ? "a" : "code");
  if (el.tagName === "A") {
    el.href = base + tx;
    el.rel = "noopener";
  }
  el.textContent = tx;
  line.append(el);
}
