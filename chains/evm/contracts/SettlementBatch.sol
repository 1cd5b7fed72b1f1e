// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

interface IEIP3009 {
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;
}

/// @title SettlementBatch
/// @notice Submits many EIP-3009 `transferWithAuthorization` calls to one token in one
///         transaction. Each call is made on its own: one that reverts (used nonce, expired,
///         bad signature, short balance) does not revert the others.
/// @dev    Holds no funds, has no owner and no state: anyone may call it, and it can do nothing
///         the authorizations themselves do not allow (the token checks every signature; the
///         caller of transferWithAuthorization is irrelevant to it). Per-item results are the
///         return values (for a simulation with eth_call) and, for a mined transaction, the
///         token's own AuthorizationUsed + Transfer logs (success) or this contract's
///         TransferFailed log with the revert data (failure).
contract SettlementBatch {
    struct Authorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
        uint8 v;
        bytes32 r;
        bytes32 s;
    }

    event TransferFailed(uint256 indexed index, bytes reason);

    /// @return ok ok[i] is true when items[i] was transferred.
    /// @return gasUsed gas spent in the loop: a simulation (eth_call) sizes the transaction's
    ///         gas limit from it without a gas-estimation search.
    function settle(address token, Authorization[] calldata items)
        external
        returns (bool[] memory ok, uint256 gasUsed)
    {
        uint256 start = gasleft();
        // A call to an address without code "succeeds" doing nothing: refuse it outright.
        require(token.code.length > 0, "SettlementBatch: token has no code");
        ok = new bool[](items.length);
        for (uint256 i = 0; i < items.length; ++i) {
            Authorization calldata a = items[i];
            try IEIP3009(token).transferWithAuthorization(
                a.from, a.to, a.value, a.validAfter, a.validBefore, a.nonce, a.v, a.r, a.s
            ) {
                ok[i] = true;
            } catch (bytes memory reason) {
                emit TransferFailed(i, reason);
            }
        }
        gasUsed = start - gasleft();
    }
}
