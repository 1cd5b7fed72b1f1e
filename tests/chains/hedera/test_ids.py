"""chains.hedera.ids: account and transaction id parsing, conversion, comparison."""

from __future__ import annotations

import pytest

from chains.hedera.ids import (
    AccountId,
    TransactionId,
    format_timestamp,
    is_account_id,
    normalize_account_id,
    parse_account_id,
    parse_timestamp,
    same_transaction,
    to_mirror_tx_id,
    to_sdk_tx_id,
)


def test_account_id_parses_and_orders_numerically():
    assert parse_account_id("0.0.123") == AccountId(0, 0, 123)
    assert str(parse_account_id("0.0.0123")) == "0.0.123"
    assert normalize_account_id("1.2.3") == "1.2.3"
    assert parse_account_id("0.0.9") < parse_account_id("0.0.10")  # not string order
    assert parse_account_id(AccountId(0, 0, 5)) == AccountId(0, 0, 5)


@pytest.mark.parametrize("junk", [
    "", "123", "0.0", "0.0.1.2", "0.0.-1", "0.0.+1", " 0.0.1", "0.0.1 ", "0.0.abc",
    "0x00000000000000000000000000000000000003eb", "0.0.12345678901", "0.0.１２",  # fullwidth digits
    None, 123,
])
def test_account_id_rejects_junk(junk):
    with pytest.raises(ValueError):
        parse_account_id(junk)
    assert not is_account_id(junk)


def test_sdk_form_nanos_are_an_integer_not_a_fraction():
    # hiero-sdk-python prints 5 ns as ".5"; the mirror wants it zero-padded to 9 digits.
    assert to_mirror_tx_id("0.0.123@1700000000.5") == "0.0.123-1700000000-000000005"
    assert to_mirror_tx_id("0.0.123@1700000000.000000005") == "0.0.123-1700000000-000000005"
    assert to_mirror_tx_id("0.0.123@1700000000.500000000") == "0.0.123-1700000000-500000000"
    assert to_sdk_tx_id("0.0.123-1700000000-000000005") == "0.0.123@1700000000.5"
    assert to_sdk_tx_id("0.0.123-1700000000-5") == "0.0.123@1700000000.5"


def test_transaction_ids_compare_as_numbers():
    assert same_transaction("0.0.123@1700000000.5", "0.0.123-1700000000-000000005")
    assert not same_transaction("0.0.123@1700000000.5", "0.0.123@1700000000.50")
    assert not same_transaction("0.0.123@1700000000.5", "0.0.124@1700000000.5")
    early, late = TransactionId.parse("0.0.1@9.999999999"), TransactionId.parse("0.0.1@10.0")
    assert early < late
    assert early.valid_start_ns == 9_999_999_999
    assert len({TransactionId.parse("0.0.7@1.1"), TransactionId.parse("0.0.7-1-000000001")}) == 1


def test_scheduled_suffix_round_trips():
    tx = TransactionId.parse("0.0.7@1.2?scheduled")
    assert tx.scheduled and tx.to_sdk() == "0.0.7@1.2?scheduled"
    assert tx.to_mirror() == "0.0.7-1-000000002"
    assert not same_transaction(tx, "0.0.7@1.2")


@pytest.mark.parametrize("junk", [
    "", "0.0.123", "0.0.123@", "0.0.123@1700000000", "0.0.123@1700000000.1234567890",
    "0.0.123-1700000000", "0.0.123-1700000000-1234567890", "0.0.123@1700000000.5?other",
    "0.0.123@-1.5", "123@1.1", "0.0.123_1700000000_000000005", "0.0.123@1700000000.5 ",
])
def test_transaction_id_rejects_junk(junk):
    with pytest.raises(ValueError):
        TransactionId.parse(junk)


def test_timestamps():
    assert parse_timestamp("1700000000.000000001") == 1_700_000_000_000_000_001
    assert parse_timestamp("1.5") == 1_500_000_000  # mirror timestamps are decimal fractions
    assert parse_timestamp("7") == 7_000_000_000
    assert format_timestamp(1_700_000_000_000_000_001) == "1700000000.000000001"
    for junk in ("", "1.", "1.1234567890", "-1.0", "a.b"):
        with pytest.raises(ValueError):
            parse_timestamp(junk)
