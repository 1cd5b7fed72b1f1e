"""The devnet's consensus node: gRPC ``proto.CryptoService`` built from the SDK's stubs.

Plaintext gRPC on 127.0.0.1, node account 0.0.3, so that
``Client.for_network({"127.0.0.1:<port>": AccountId(0, 0, 3)})`` works unchanged.

What hiero-sdk-python 0.3 needs from a node for transfers, approvals and account
creation: the three transaction RPCs (``cryptoTransfer``, ``approveAllowances``,
``createAccount``) answering ``TransactionResponse.nodeTransactionPrecheckCode``, and
``getTransactionReceipts`` (``execute()`` always fetches the receipt; it is a free
query, no payment header). ``cryptoGetBalance`` is also free. Every other RPC answers
gRPC UNIMPLEMENTED (the generated servicer's default), which the SDK raises at once.

Fault injection (``fail_next``): ``"busy"`` answers precheck BUSY without processing
(the SDK retries); ``"lost"`` processes the transaction and then drops the answer with
gRPC UNAVAILABLE, the situation exactly-once submission must survive.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from hiero_sdk_python.hapi.services import (
    crypto_get_account_balance_pb2,
    crypto_service_pb2_grpc,
    response_header_pb2,
    response_pb2,
    transaction_get_receipt_pb2,
    transaction_receipt_pb2,
    transaction_response_pb2,
)

from .ledger import Record, TxKey
from .processor import Processor
from .txn import Code, account_num

FAULT_MODES = ("busy", "lost")


class CryptoServicer(crypto_service_pb2_grpc.CryptoServiceServicer):
    """Answers the CryptoService RPCs from a :class:`Processor` and its ledger."""

    def __init__(self, processor: Processor):
        self.processor = processor
        self.ledger = processor.ledger
        self._faults: list[str] = []
        self._faults_lock = threading.Lock()

    # -- fault injection --------------------------------------------------------------

    def fail_next(self, count: int, mode: str) -> None:
        """Make the next ``count`` transaction submissions fail in ``mode`` (see module doc)."""
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}")
        with self._faults_lock:
            self._faults = [mode] * count

    def _take_fault(self) -> str | None:
        with self._faults_lock:
            return self._faults.pop(0) if self._faults else None

    # -- transactions -----------------------------------------------------------------

    def _submit(self, request, context):
        fault = self._take_fault()
        if fault == "busy":
            return transaction_response_pb2.TransactionResponse(nodeTransactionPrecheckCode=Code.BUSY)
        code = self.processor.submit(request)
        if fault == "lost":
            context.abort(grpc.StatusCode.UNAVAILABLE, "devnet: response dropped after processing")
        return transaction_response_pb2.TransactionResponse(nodeTransactionPrecheckCode=code)

    def cryptoTransfer(self, request, context):
        return self._submit(request, context)

    def approveAllowances(self, request, context):
        return self._submit(request, context)

    def createAccount(self, request, context):
        return self._submit(request, context)

    # -- queries (free: a COST_ANSWER request gets cost 0) ----------------------------

    def cryptoGetBalance(self, request, context):
        query = request.cryptogetAccountBalance
        answer = crypto_get_account_balance_pb2.CryptoGetAccountBalanceResponse(accountID=query.accountID)
        num = account_num(query.accountID) if query.WhichOneof("balanceSource") == "accountID" else None
        with self.ledger.lock:
            account = self.ledger.accounts.get(num) if num is not None else None
            code = Code.OK if account is not None else Code.INVALID_ACCOUNT_ID
            answer.balance = account.balance if account is not None else 0
        answer.header.CopyFrom(_header(code, query.header.responseType))
        return response_pb2.Response(cryptogetAccountBalance=answer)

    def getTransactionReceipts(self, request, context):
        query = request.transactionGetReceipt
        answer = transaction_get_receipt_pb2.TransactionGetReceiptResponse()
        tx_id = query.transactionID
        payer = account_num(tx_id.accountID)
        records: list[Record] = []
        if payer is not None:
            key = TxKey(payer, tx_id.transactionValidStart.seconds, tx_id.transactionValidStart.nanos,
                        tx_id.scheduled, tx_id.nonce)
            with self.ledger.lock:
                records = list(self.ledger.records.get(key, ()))
        if not records:
            answer.header.CopyFrom(_header(Code.RECEIPT_NOT_FOUND, query.header.responseType))
            return response_pb2.Response(transactionGetReceipt=answer)
        answer.header.CopyFrom(_header(Code.OK, query.header.responseType))
        answer.receipt.CopyFrom(_receipt(records[0]))
        if query.includeDuplicates:
            answer.duplicateTransactionReceipts.extend(_receipt(r) for r in records[1:])
        return response_pb2.Response(transactionGetReceipt=answer)


def _header(code: int, response_type: int) -> response_header_pb2.ResponseHeader:
    return response_header_pb2.ResponseHeader(nodeTransactionPrecheckCode=code, responseType=response_type,
                                              cost=0)


def _receipt(record: Record) -> transaction_receipt_pb2.TransactionReceipt:
    receipt = transaction_receipt_pb2.TransactionReceipt(status=Code.Value(record.status))
    if record.created is not None:
        receipt.accountID.accountNum = record.created
    return receipt


class ConsensusServer:
    """A threaded gRPC server around one :class:`CryptoServicer` (start/stop, sync)."""

    def __init__(self, processor: Processor, host: str = "127.0.0.1", port: int = 0, workers: int = 16):
        self.servicer = CryptoServicer(processor)
        pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="devnet-grpc")
        self._server = grpc.server(pool)
        crypto_service_pb2_grpc.add_CryptoServiceServicer_to_server(self.servicer, self._server)
        self.host = host
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"could not bind gRPC server to {host}:{port}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float = 0.5) -> None:
        self._server.stop(grace).wait()
