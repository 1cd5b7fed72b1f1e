// The signer seam: the page reaches a wallet only through this interface.
//
//   { accountId: "0.0.1234",
//     signTransaction(base64Bytes) -> Promise<base64 signed bytes>,   // gateway submits
//     signMessage(text)            -> Promise<hex or base64 signature> } // hedera_signMessage
//
// Implementations: an injected `window.tollgateSigner` (browser extensions, tests), the
// WalletConnect signer (hedera-wallet-connect, loaded only when asked for), and the
// demo's devnet-only signer.

export function injectedSigner() {
  const s = window.tollgateSigner;
  if (!s || typeof s.signTransaction !== "function" || typeof s.signMessage !== "function") {
    return null;
  }
  return s;
}

export function devSigner(accountId) {
  async function ask(body) {
    const resp = await fetch("/api/dev/sign", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ account_id: accountId, ...body }),
    });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.message || `HTTP ${resp.status}`);
    return data;
  }
  return {
    accountId,
    kind: "devnet demo signer",
    signTransaction: async (tx) => (await ask({ transaction: tx })).transaction,
    signMessage: async (message) => (await ask({ message })).signature,
  };
}

export async function walletConnectSigner(projectId, network) {
  // The heavy bundle (hedera-wallet-connect and the Hedera SDK) only when a person asks.
  const mod = await import("/static/build/walletconnect.js");
  return mod.connect(projectId, network);
}
