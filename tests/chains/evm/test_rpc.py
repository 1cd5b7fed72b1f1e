"""RpcClient error mapping: outages are RpcUnavailable, JSON-RPC errors are RpcError."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from eth_abi import encode

from chains.evm.rpc import RpcClient, RpcError, RpcUnavailable, revert_reason, selector


@pytest.fixture
async def fake_node():
    """An HTTP server whose answer each test chooses: ``set(handler)`` -> url."""
    release = asyncio.Event()
    state = {}

    async def handle(request):
        return await state["handler"](request, release)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    def use(handler):
        state["handler"] = handler
        return f"http://127.0.0.1:{port}/"

    yield use
    release.set()  # let a parked handler finish so cleanup does not wait on it
    await runner.cleanup()


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_http_errors_are_unavailable(fake_node, status):
    async def handler(request, release):
        return web.Response(status=status, text="upstream trouble")

    async with RpcClient(fake_node(handler)) as rpc:
        with pytest.raises(RpcUnavailable, match=str(status)):
            await rpc.block_number()


async def test_non_json_body_is_unavailable(fake_node):
    async def handler(request, release):
        return web.Response(status=200, text="<html>captive portal</html>")

    async with RpcClient(fake_node(handler)) as rpc:
        with pytest.raises(RpcUnavailable):
            await rpc.chain_id()


async def test_slow_node_times_out_as_unavailable(fake_node):
    async def handler(request, release):
        await release.wait()  # never answers while the client waits
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": "0x1"})

    async with RpcClient(fake_node(handler), timeout=0.2) as rpc:
        with pytest.raises(RpcUnavailable, match="timed out"):
            await rpc.block_number()


async def test_error_object_is_rpc_error_with_code_and_data(fake_node):
    async def handler(request, release):
        body = await request.json()
        error = {"code": -32000, "message": "boom", "data": {"why": "test"}}
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": error})

    async with RpcClient(fake_node(handler)) as rpc:
        with pytest.raises(RpcError) as err:
            await rpc.call("eth_anything", [1])
    assert (err.value.code, err.value.message, err.value.data) == (-32000, "boom", {"why": "test"})
    assert not err.value.is_revert


async def test_unknown_method_on_anvil_is_rpc_error(evm_rpc):
    with pytest.raises(RpcError) as err:
        await evm_rpc.call("eth_noSuchMethod")
    assert err.value.code == -32601


async def test_reads_against_anvil(evm_devnet, evm_rpc):
    assert await evm_rpc.block_number() >= evm_devnet.ready_block
    assert await evm_rpc.get_transaction_count(evm_devnet.poor.address) == 0
    fees = await evm_rpc.fee_estimate()
    assert fees.max_fee_per_gas >= fees.max_priority_fee_per_gas > 0
    assert await evm_rpc.gas_price() > 0
    assert len(await evm_rpc.get_code(evm_devnet.token_address)) > 1000
    assert await evm_rpc.get_transaction_receipt("0x" + "00" * 32) is None
    assert await evm_rpc.get_transaction_by_hash("0x" + "00" * 32) is None
    with pytest.raises(ValueError):
        await evm_rpc.authorization_state(evm_devnet.token_address, evm_devnet.poor.address, b"short")


def test_revert_reason_decoding():
    error_string = selector("Error(string)") + encode(["string"], ["nope"])
    assert revert_reason(error_string) == "nope"
    assert revert_reason("0x" + error_string.hex()) == "nope"
    assert revert_reason(selector("Panic(uint256)") + encode(["uint256"], [0x11])) == "panic 0x11"
    assert revert_reason(bytes.fromhex("deadbeef")) == "custom error 0xdeadbeef"
    assert revert_reason("0x") is None
    assert revert_reason(None) is None
