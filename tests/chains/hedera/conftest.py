"""The Hedera fixtures (`hedera_devnet`, `hedera_account`, `hedera_mirror_faults`) live in
tests/conftest.py so gateway and session tests share one network."""
