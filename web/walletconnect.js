// The production signer: a Hedera wallet (HashPack, Kabila, ...) over WalletConnect, through
// @hashgraph/hedera-wallet-connect. Built into its own bundle, loaded on demand.

import {
  DAppConnector,
  HederaChainId,
  HederaJsonRpcMethod,
  HederaSessionEvent,
} from "@hashgraph/hedera-wallet-connect";
import { LedgerId, Transaction } from "@hashgraph/sdk";

function toBytes(b64) {
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function toBase64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function connect(projectId, network) {
  const mainnet = network === "hedera:mainnet";
  const metadata = {
    name: "Tollgate",
    description: "Pay-per-call sessions from an HBAR allowance",
    url: window.location.origin,
    icons: [],
  };
  const connector = new DAppConnector(
    metadata,
    mainnet ? LedgerId.MAINNET : LedgerId.TESTNET,
    projectId,
    Object.values(HederaJsonRpcMethod),
    [HederaSessionEvent.ChainChanged, HederaSessionEvent.AccountsChanged],
    [mainnet ? HederaChainId.Mainnet : HederaChainId.Testnet],
  );
  await connector.init({ logger: "error" });
  await connector.openModal();
  const signer = connector.signers[0];
  if (!signer) throw new Error("the wallet connected no account");
  return {
    accountId: signer.getAccountId().toString(),
    kind: "WalletConnect",
    async signTransaction(b64) {
      const signed = await signer.signTransaction(Transaction.fromBytes(toBytes(b64)));
      return toBase64(signed.toBytes());
    },
    async signMessage(message) {
      const [sig] = await signer.sign([new TextEncoder().encode(message)]);
      return toHex(sig.signature);
    },
  };
}
