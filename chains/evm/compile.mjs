#!/usr/bin/env node
// Compile each contract of CONTRACTS (chains/evm/contracts/<Name>.sol) with solcjs (npm `solc`,
// standard JSON) into chains/evm/build/<Name>.json: { abi, bytecode, deployedBytecode,
// sourceSha256, compiler }. TestUSDC is the devnet's token; SettlementBatch settles many
// EIP-3009 authorizations in one transaction.
//
// The artifact is committed so starting a devnet needs no compiler; tests/chains/evm/test_artifact.py
// recompiles and fails when the artifact no longer matches the source.
//
// Usage (from anywhere):
//   node chains/evm/compile.mjs                  write every artifact
//   node chains/evm/compile.mjs --stdout [Name]  print one artifact (default TestUSDC)
//   node chains/evm/compile.mjs --check          exit 1 if a committed artifact is stale
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const HERE = dirname(fileURLToPath(import.meta.url));
const CONTRACTS = ["TestUSDC", "SettlementBatch"];
const sourcePath = (name) => join(HERE, "contracts", `${name}.sol`);
const outPath = (name) => join(HERE, "build", `${name}.json`);

// Pinned so the bytecode is reproducible: same source + same settings => same bytes.
// cancun: every chain the devnet or a testnet runs today accepts it (PUSH0, MCOPY).
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function compile(CONTRACT) {
  const source = readFileSync(sourcePath(CONTRACT), "utf8");
  // The source unit name is a bare file name: it ends up in the metadata hash inside the
  // bytecode, so an absolute path would make the artifact depend on the checkout location.
  const input = {
    language: "Solidity",
    sources: { [`${CONTRACT}.sol`]: { content: source } },
    settings: SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
  if (errors.length) throw new Error(`${CONTRACT}.sol failed to compile`);
  const unit = output.contracts[`${CONTRACT}.sol`][CONTRACT];
  const artifact = {
    contractName: CONTRACT,
    source: `contracts/${CONTRACT}.sol`,
    sourceSha256: createHash("sha256").update(source, "utf8").digest("hex"),
    compiler: { name: "solcjs", version: solc.version(), settings: SETTINGS },
    abi: unit.abi,
    bytecode: "0x" + unit.evm.bytecode.object,
    deployedBytecode: "0x" + unit.evm.deployedBytecode.object,
  };
  return JSON.stringify(artifact, null, 2) + "\n";
}

const mode = process.argv[2] || "--write";
if (mode === "--stdout") {
  const name = process.argv[3] || "TestUSDC";
  if (!CONTRACTS.includes(name)) {
    process.stderr.write(`unknown contract ${name}\n`);
    process.exit(2);
  }
  process.stdout.write(compile(name));
} else if (mode === "--check") {
  let stale = false;
  for (const name of CONTRACTS) {
    const current = existsSync(outPath(name)) ? readFileSync(outPath(name), "utf8") : "";
    if (current !== compile(name)) {
      process.stderr.write(`${outPath(name)} is stale: run node chains/evm/compile.mjs\n`);
      stale = true;
    }
  }
  if (stale) process.exit(1);
} else if (mode === "--write") {
  for (const name of CONTRACTS) {
    mkdirSync(dirname(outPath(name)), { recursive: true });
    writeFileSync(outPath(name), compile(name));
    process.stderr.write(`wrote ${outPath(name)}\n`);
  }
} else {
  process.stderr.write("usage: node chains/evm/compile.mjs [--stdout [Name]|--check]\n");
  process.exit(2);
}
