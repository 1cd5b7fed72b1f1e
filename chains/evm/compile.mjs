#!/usr/bin/env node
// Compile chains/evm/contracts/TestUSDC.sol with solcjs (npm `solc`, standard JSON) into
// chains/evm/build/TestUSDC.json: { abi, bytecode, deployedBytecode, sourceSha256, compiler }.
//
// The artifact is committed so starting a devnet needs no compiler; tests/chains/evm/test_artifact.py
// recompiles and fails when the artifact no longer matches the source.
//
// Usage (from anywhere):
//   node chains/evm/compile.mjs           write the artifact
//   node chains/evm/compile.mjs --stdout  print the artifact instead of writing it
//   node chains/evm/compile.mjs --check   exit 1 if the committed artifact is stale
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const HERE = dirname(fileURLToPath(import.meta.url));
const CONTRACT = "TestUSDC";
const SOURCE_PATH = join(HERE, "contracts", `${CONTRACT}.sol`);
const OUT_PATH = join(HERE, "build", `${CONTRACT}.json`);

// Pinned so the bytecode is reproducible: same source + same settings => same bytes.
// cancun: every chain the devnet or a testnet runs today accepts it (PUSH0, MCOPY).
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function compile() {
  const source = readFileSync(SOURCE_PATH, "utf8");
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
const text = compile();
if (mode === "--stdout") {
  process.stdout.write(text);
} else if (mode === "--check") {
  const current = existsSync(OUT_PATH) ? readFileSync(OUT_PATH, "utf8") : "";
  if (current !== text) {
    process.stderr.write(`${OUT_PATH} is stale: run node chains/evm/compile.mjs\n`);
    process.exit(1);
  }
} else if (mode === "--write") {
  mkdirSync(dirname(OUT_PATH), { recursive: true });
  writeFileSync(OUT_PATH, text);
  process.stderr.write(`wrote ${OUT_PATH}\n`);
} else {
  process.stderr.write("usage: node chains/evm/compile.mjs [--stdout|--check]\n");
  process.exit(2);
}
