"""Our secure aggregation side by side with Flower's SecAgg+ (flwr 1.42): time and bytes per party.

Both protocols run one round in a single process on the same ``n`` clients, the same inputs
(``normal(0, 0.02)`` vectors of ``L`` floats from the same seed; both venvs draw identical floats,
checked by a digest), the same neighbour graph degree (``all``: every pair, plain SecAgg, our
coordinator's default; ``k``: a SecAgg+ ring of degree ``k``; default both, ``all`` and 8), the same
Shamir threshold ``t`` (our ``SecAggSettings.config_for(n)``) and the same dropout:
``round(dropout * n)`` clients (at least one) share their keys, then never send a masked input
(the last ones, except that on a sparse graph a client is spared where its loss would leave a
neighbour with fewer than ``t`` live neighbours: see :func:`choose_dropped`). Repeats alternate
which protocol runs first; figures are medians. Each protocol's average is checked against the
plain mean of the survivors' inputs, and the script fails if either is off by more than its
quantisation bound.

Ours (``lada_client.common.secagg`` + ``lada_coordinator.aggregation.secagg_server``), driven as
``bench_crypto.py`` Part 2 does. Client time: ``SecAggClient()``, ``advertise``, ``share_keys``,
``masked_input`` (quantisation included), ``unmask``. Server time: every ``SecAggServer`` call
(``receive_*``, ``roster``, ``route_shares``, ``unmask_request``, ``aggregate``, whose Lagrange cache
is cleared per round) and building each client's ``SecAggInbox``. Bytes: the JSON of each message
(``model_dump_json``), the pydantic model a party puts in its sealed envelope.

Flower runs in its own virtualenv (``--flower-python``: this file with ``--flower-side``, a worker
answering one JSON line per request). Its real code is driven, not re-implemented: the four
``SecAggPlusWorkflow`` stages (``setup``, ``share_keys``, ``collect_masked_vectors``, ``unmask``)
over an in-process ``Grid`` that hands each message to the real ``secaggplus_mod`` of its node (one
``Context`` per node); the mod's ``call_next`` (the ClientApp's train) returns the client's vector
as a ``FitRes`` with ``num_examples=1``. Client time: inside ``secaggplus_mod`` minus inside
``call_next``. Server time: each stage minus inside ``Grid.send_and_receive`` (message building,
share forwarding, summing, unmasking and the workflow's ``FitRes`` bookkeeping stay in). The grid
passes every message through Flower's protobuf (``message_to_proto``, ``SerializeToString``, and back
with ``message_from_proto``), so each node gets its own copy as over a network. Bytes: the
message's ``content`` (the ``RecordDict`` protobuf), without its metadata. The strategy is a stub
that hands the workflow's average back untouched (no FedAvg pass).

(De)serialisation is each party's own work but not protocol work: it is timed apart, to the party
that does it (the sender writes, each receiver parses), and shown in a second table
(``*_with_wire``). For us it is the payload encoding (JSON, byte fields as raw attachments) plus
pydantic validation, which checks the X25519 keys in a client's roster view (every mask key, its
neighbours' channel keys); for Flower it is protobuf only. Neither side includes a transport:
no SuperLink, gRPC, TLS or Ray, no HTTP coordinator, no sealed envelopes.

Matched parameters: Flower ``clipping_range=4`` (our ``clip``), ``quantization_range=2**19`` (one
step ``2*4/2**19 = 2**-16``, our ``1/scale``), ``modulus_range=2**32`` (our group),
``max_weight=1`` with ``num_examples=1`` (its weighted average is then the plain mean),
``num_shares = degree + 1`` (Flower's ring counts the owner, who keeps one share of its own),
``reconstruction_threshold = t`` (at least 2, Flower's minimum). A SecAgg+ degree must be even:
flwr 1.42 fails with an even ``num_shares`` (its setup bumps it after telling the clients).

Not comparable, or not the same thing:

* Cryptography: Flower uses ECDH on P-384 with keys passed as PEM (parsed again at every use),
  Fernet (AES-128-CBC + HMAC) for the shares, Shamir over GF(2**128) in 16-byte chunks (pycryptodome,
  pure-Python field arithmetic, a thread pool per secret) and masks from numpy's MT19937 seeded with
  32 bits (the XOR of the derived key's words: a search of 2**32 seeds, not a cryptographic PRG).
  We use X25519 with raw keys, AES-256-GCM, Shamir over GF(2**521-1) with a cached Lagrange basis,
  AES-256-CTR mask streams, a commitment to each self-mask seed and checks against lying
  responders. Each protocol's cost is the cost of its own choices; the ratios say nothing about
  a single primitive.
* Work placement: Flower sums masked vectors in ``collect_masked_vectors``, we in ``aggregate``;
  Flower's server rebuilds each secret from every share it received, we from ``t``; for a dropped
  client both redo one key agreement per affected neighbour. Per-stage times are in the JSON.
* Rounding: Flower rounds stochastically (error under one step per client), we to nearest (half a
  step); each is checked against its own bound.
* Bytes: ours are the payloads as sent (JSON, byte fields of 64 B or more as raw attachments);
  Flower's are protobuf (raw bytes). Not counted: our envelope (frame, header, AES-GCM tag, Ed25519
  signature, about 200 B per message), Flower's message metadata and gRPC framing. Flower uploads
  the masked vector as int64 ``.npy`` bytes (8 B per entry, plus its weight entry), we as raw
  uint32 (4 B per entry). Flower's
  ``collect_masked_vectors`` message carries the FitIns, the global model in a real round: here its
  parameters are empty, so only SecAgg data is counted. Neither side counts the result (our
  ``SecAggResult``, Flower's next-round model). Our roster view holds every participant's id and
  mask key (each client derives the graph itself) and its neighbours' channel keys; Flower sends
  each node its neighbours' keys only (its clients take the server's word for the graph).
* Clients: per-client figures are means over the survivors (a dropped client does half a round;
  its upload is in the JSON).

    python benchmarks/bench_secagg_flower.py [--quick] [--clients 10 20 50] [--length 10000]
        [--dropout 0.1] [--neighbours all 8] [--repeats 5] [--flower-python /work/flwr-venv/bin/python]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

NAME = "bench_secagg_flower"
DEFAULT_FLOWER_PYTHON = "/work/flwr-venv/bin/python"
STAGES = ("setup", "share_keys", "masked_input", "unmask")
#: quantisation both sides use: values clipped to +-CLIP, one step = 1/SCALE (our SecAggSettings defaults)
CLIP, SCALE = 4.0, 2.0**16


# ------------------------------------------------------------------------------------- shared
def inputs(n: int, length: int, seed: int) -> list[np.ndarray]:
    """The clients' updates: identical floats in both venvs (same numpy generator and seed)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 0.02, length) for _ in range(n)]


def digest(vectors: list[np.ndarray]) -> str:
    """Fingerprint of the inputs, so the two sides can be shown to have summed the same numbers."""
    h = hashlib.sha256()
    for v in vectors:
        h.update(np.ascontiguousarray(v, dtype="<f8").tobytes())
    return h.hexdigest()[:16]


def dropped_count(n: int, dropout: float) -> int:
    """``round(dropout * n)`` clients drop after sharing keys; at least one when ``dropout > 0``, so
    a small round still has a dropped client's masks to recover."""
    return max(1, round(dropout * n)) if dropout > 0 else 0


def choose_dropped(graph: dict[int, set[int]], count: int, threshold: int) -> list[int]:
    """Which clients drop: from the last index down (as bench_crypto drops the last ids), skipping
    any whose loss would leave some client with fewer than ``threshold`` live neighbours. Past that
    neither protocol can rebuild that client's secrets and the round aborts (a real outcome, but not
    one with figures to compare), which a sparse graph meets at random drop sets. Each protocol draws
    its own random graph, so the sets can differ; their size is the same. With all pairs it is
    always the last ``count``."""
    dropped: set[int] = set()
    for candidate in sorted(graph, reverse=True):
        if len(dropped) == count:
            break
        trial = dropped | {candidate}
        if all(len(peers - trial) >= threshold for peers in graph.values()):
            dropped = trial
    if len(dropped) < count:
        raise RuntimeError(f"cannot drop {count} clients and keep {threshold} live neighbours for every client")
    return sorted(dropped)


def degree_of(n: int, neighbours: int | None) -> int:
    return n - 1 if neighbours is None else min(neighbours, n - 1)


class Clock:
    """Wall and CPU seconds of one party, summed over the calls it makes."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __call__(self, fn: Callable[[], Any]) -> Any:
        w, c = time.perf_counter(), time.process_time()
        try:
            return fn()
        finally:
            self.wall += time.perf_counter() - w
            self.cpu += time.process_time() - c

    def minus(self, wall: float, cpu: float) -> None:
        self.wall -= wall
        self.cpu -= cpu


def record(
    side: str,
    n: int,
    length: int,
    threshold: int,
    degree: int,
    dropped: list[int],
    client: dict[int, dict[str, Clock]],
    server: dict[str, Clock],
    up: dict[int, int],
    down: dict[int, int],
    mean_secure: np.ndarray,
    vectors: list[np.ndarray],
    tolerance: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One side's figures in the form both sides report: survivors' per-client means (a dropped
    client does half a round), the server's total and per-stage times, the (de)serialisation each
    party does apart (``wire``), and the check of the sum."""
    survivors = [i for i in range(n) if i not in set(dropped)]
    plain = np.mean([vectors[i] for i in survivors], axis=0)
    error = float(np.max(np.abs(mean_secure - plain)))

    def per_client(clock: str, stages: tuple[str, ...] = STAGES) -> list[float]:
        return [sum(getattr(client[i][s], clock) for s in stages) for i in survivors]

    client_s = float(np.mean(per_client("wall")))
    client_wire_s = float(np.mean(per_client("wall", ("wire",))))
    server_s = sum(server[s].wall for s in STAGES)

    return {
        "side": side,
        "clients": n,
        "length": length,
        "degree": degree,
        "threshold": threshold,
        "dropped": len(dropped),
        "survivors": len(survivors),
        "client_s_mean": client_s,
        "client_s_max": float(np.max(per_client("wall"))),
        "client_cpu_s_mean": float(np.mean(per_client("cpu"))),
        "client_stage_s_mean": {s: float(np.mean([client[i][s].wall for i in survivors])) for s in STAGES},
        "server_s": server_s,
        "server_cpu_s": sum(server[s].cpu for s in STAGES),
        "server_stage_s": {s: server[s].wall for s in STAGES},
        "client_wire_s_mean": client_wire_s,
        "server_wire_s": server["wire"].wall,
        "client_with_wire_s_mean": client_s + client_wire_s,
        "server_with_wire_s": server_s + server["wire"].wall,
        "client_up_bytes_mean": float(np.mean([up[i] for i in survivors])),
        "client_down_bytes_mean": float(np.mean([down[i] for i in survivors])),
        "dropped_client_up_bytes_mean": float(np.mean([up[i] for i in dropped])) if dropped else None,
        "server_in_bytes": int(sum(up.values())),
        "server_out_bytes": int(sum(down.values())),
        "max_abs_error": error,
        "tolerance": tolerance,
        "correct": error <= tolerance,
        "inputs_digest": digest(vectors),
        **(extra or {}),
    }


# ----------------------------------------------------------------------------------- our side
def run_ours(n: int, length: int, dropout: float, neighbours: int | None = None, seed: int = 0) -> dict[str, Any]:
    """One round of our protocol, every party in this process (as ``bench_crypto.run_secagg``).
    Each message's payload (``attachments.dump``: JSON, byte fields as raw attachments) is written by
    its sender and parsed by each receiver, timed as that party's ``wire``, and counted as the
    sender's upload / each receiver's download. Each client receives its own view of the roster
    (``Roster.view_for``), as the coordinator sends it."""
    from bench_crypto import secagg_config
    from lada_client.common import attachments
    from lada_client.common.secagg import (
        AdvertiseKeys,
        MaskedInput,
        Roster,
        SecAggClient,
        SecAggInbox,
        ShareKeys,
        UnmaskRequest,
        UnmaskResponse,
        lagrange_coefficients,
    )
    from lada_coordinator.aggregation.secagg_server import SecAggServer

    lagrange_coefficients.cache_clear()  # every repeat is a fresh round: no basis cached from the last one
    config = secagg_config(n, neighbours)
    if (config.clip, config.scale) != (CLIP, SCALE):
        raise RuntimeError(f"our SecAgg config changed ({config}); update CLIP/SCALE so Flower matches")
    vectors = inputs(n, length, seed)
    ids = [f"client{k:03d}" for k in range(n)]
    round_id = "r1/flower-bench"
    client = {i: {s: Clock() for s in (*STAGES, "wire")} for i in range(n)}
    server = {s: Clock() for s in (*STAGES, "wire")}
    up = dict.fromkeys(range(n), 0)
    down = dict.fromkeys(range(n), 0)

    def send(message: Any, cls: Any, sender: int | None = None, receivers: tuple[int, ...] = ()) -> Any:
        """A client's message to the server (``sender``) or the server's to ``receivers``: written
        once by its sender, parsed by every receiver (a broadcast is parsed once per client)."""
        raw = (server if sender is None else client[sender])["wire"](lambda: attachments.dump(message))
        if sender is not None:
            up[sender] += len(raw)
            return server["wire"](lambda: attachments.load(cls, raw))
        parsed = None
        for r in receivers:
            down[r] += len(raw)
            parsed = client[r]["wire"](lambda: attachments.load(cls, raw))
        return parsed

    # 1. keys
    srv = server["setup"](lambda: SecAggServer(round_id, config, length))
    clients = {i: client[i]["setup"](lambda c=ids[i]: SecAggClient(c, round_id, config)) for i in range(n)}
    for i in range(n):
        advert = send(client[i]["setup"](clients[i].advertise), AdvertiseKeys, sender=i)
        server["setup"](lambda a=advert: srv.receive_advertise(a))
    roster = server["setup"](srv.roster)
    views = {i: send(server["setup"](lambda c=ids[i]: roster.view_for(c)), Roster, receivers=(i,)) for i in range(n)}
    position = {c: i for i, c in enumerate(ids)}
    graph = {position[c]: {position[p] for p in peers} for c, peers in roster.graph.items()}
    dropped = choose_dropped(graph, dropped_count(n, dropout), config.threshold)
    survivors = [i for i in range(n) if i not in set(dropped)]
    # 2. shares
    for i in range(n):
        shares = send(client[i]["share_keys"](lambda i=i: clients[i].share_keys(views[i])), ShareKeys, sender=i)
        server["share_keys"](lambda s=shares: srv.receive_shares(s))
    routed = server["share_keys"](srv.route_shares)
    inboxes = {i: server["share_keys"](lambda c=ids[i]: SecAggInbox(shares=tuple(routed[c]))) for i in range(n)}
    inboxes = {i: send(inboxes[i], SecAggInbox, receivers=(i,)) for i in range(n)}
    # 3. masked inputs (the dropped clients go silent here)
    for i in survivors:
        masked = client[i]["masked_input"](lambda i=i: clients[i].masked_input(vectors[i], inboxes[i].shares))
        masked = send(masked, MaskedInput, sender=i)
        server["masked_input"](lambda m=masked: srv.receive_masked_input(m))
    request = send(server["masked_input"](srv.unmask_request), UnmaskRequest, receivers=tuple(survivors))
    # 4. unmask
    for i in survivors:
        response = client[i]["unmask"](lambda i=i: clients[i].unmask(request.survivors, request.dropped))
        response = send(response, UnmaskResponse, sender=i)
        server["unmask"](lambda r=response: srv.receive_unmask(r))
    aggregate = server["unmask"](srv.aggregate)
    if sorted(aggregate.contributors) != sorted(ids[i] for i in survivors):
        raise RuntimeError(f"our aggregate counts {aggregate.contributors}, expected the {len(survivors)} survivors")
    mean_secure = aggregate.total / len(survivors)
    # deterministic rounding: half a step per client, so half a step on the mean (+ float noise)
    tolerance = 0.5 / SCALE + 1e-9
    return record(
        "ours", n, length, config.threshold, min(len(peers) for peers in roster.graph.values()), dropped,
        client, server, up, down, mean_secure, vectors, tolerance,
    )  # fmt: skip


# -------------------------------------------------------------------------------- Flower side
def run_flower(n: int, length: int, dropout: float, neighbours: int | None, threshold: int, seed: int = 0) -> dict:
    """One round of Flower's SecAgg+: the real ``SecAggPlusWorkflow`` stages and ``secaggplus_mod``
    over an in-process grid (see the module docstring). Runs in the Flower virtualenv."""
    import logging
    import random

    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
    from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.compat.common import recorddict_compat as compat
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import Strategy
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow, WorkflowState
    from flwr.serverapp.grid import Grid
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.WARNING)
    # what a ServerApp process is given at start: messages it creates are stamped with it
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    random.seed(seed)  # the workflow shuffles the ring with `random`
    np.random.seed(seed)  # its stochastic rounding draws from numpy's global generator
    vectors = inputs(n, length, seed)
    node_ids = random.sample(range(1, 2**63), n)  # Flower's node ids are random 64-bit integers
    index = {nid: i for i, nid in enumerate(node_ids)}
    gone: set[int] = set()
    stage_names = dict(zip(Stage.all(), STAGES))
    client = {i: {s: Clock() for s in (*STAGES, "wire")} for i in range(n)}
    server = {s: Clock() for s in (*STAGES, "wire")}
    inside_grid = Clock()
    up = dict.fromkeys(range(n), 0)
    down = dict.fromkeys(range(n), 0)
    contexts = {
        nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={}) for nid in node_ids
    }

    def transport(msg: Message, node: int, upward: bool) -> Message:
        """Serialise to protobuf (the sender's work) and parse it back (the receiver's), as the
        transport would; count the content bytes as the node's upload or download."""
        sender, receiver = (client[node]["wire"], server["wire"]) if upward else (server["wire"], client[node]["wire"])
        proto = sender(lambda: message_to_proto(msg))
        data = sender(proto.SerializeToString)
        (up if upward else down)[node] += proto.content.ByteSize()
        return receiver(lambda: message_from_proto(ProtoMessage.FromString(data)))

    def node_app(msg: Message) -> Message:
        """The node: Flower's SecAgg+ mod around a ClientApp whose training hands back the vector."""
        nid = msg.metadata.dst_node_id
        i = index[nid]
        stage = stage_names[msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]]
        app = Clock()

        def train(m: Message, ctxt: Context) -> Message:  # the ClientApp: not SecAgg work, not timed
            fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vectors[i]]), 1, {})
            return app(lambda: Message(compat.fitres_to_recorddict(fitres, True), reply_to=m))

        reply = client[i][stage](lambda: secaggplus_mod(msg, contexts[nid], train))
        client[i][stage].minus(app.wall, app.cpu)
        return reply

    class LocalGrid(Grid):
        """Delivers each message to its node in this process; a dropped node never answers."""

        def set_run(self, run: Any) -> None:
            pass

        @property
        def run(self) -> Any:
            raise NotImplementedError

        def create_message(
            self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
        ) -> Message:
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> list[int]:
            return list(node_ids)

        def push_messages(self, messages: Any) -> Any:
            raise NotImplementedError

        def pull_messages(self, message_ids: Any) -> Any:
            raise NotImplementedError

        def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
            def deliver() -> list[Message]:
                replies = []
                for msg in messages:
                    nid = msg.metadata.dst_node_id
                    if nid in gone:
                        continue
                    delivered = transport(msg, index[nid], upward=False)
                    replies.append(transport(node_app(delivered), index[nid], upward=True))
                return replies

            return inside_grid(deliver)

    class Passthrough(Strategy):
        """Samples every node once and keeps the workflow's average as it is."""

        def __init__(self, grid: Grid) -> None:
            self.proxies = [GridClientProxy(nid, grid, 1) for nid in node_ids]
            self.average: Parameters | None = None

        def initialize_parameters(self, client_manager: Any) -> None:
            return None

        def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
            return [(p, FitIns(parameters, {})) for p in self.proxies]

        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
            if failures:
                raise RuntimeError(f"Flower SecAgg+ reported failures: {failures}")
            self.average = results[0][1].parameters
            return None, {}

        def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
            return []

        def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
            return None, {}

        def evaluate(self, server_round: int, parameters: Parameters) -> None:
            return None

    grid = LocalGrid()
    strategy = Passthrough(grid)
    context = LegacyContext(
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=strategy,
        client_manager=SimpleClientManager(),
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # no model rides along: SecAgg bytes only
    flower_threshold = max(2, threshold)
    workflow = SecAggPlusWorkflow(
        num_shares=degree_of(n, neighbours) + 1,
        reconstruction_threshold=flower_threshold,
        max_weight=1.0,
        clipping_range=CLIP,
        quantization_range=int(2 * CLIP * SCALE),
        modulus_range=2**32,
    )
    state = WorkflowState()
    steps = (
        workflow.setup_stage,
        workflow.share_keys_stage,
        workflow.collect_masked_vectors_stage,
        workflow.unmask_stage,
    )
    dropped: list[int] = []  # fixed once the setup stage has drawn the ring
    degree = 0
    for stage, step in zip(STAGES, steps):
        if stage == "masked_input":
            gone.update(node_ids[i] for i in dropped)  # shared their keys, then went silent
        before = (inside_grid.wall, inside_grid.cpu)
        ok = server[stage](lambda step=step: step(grid, context, state))
        server[stage].minus(inside_grid.wall - before[0], inside_grid.cpu - before[1])
        if not ok:
            raise RuntimeError(f"Flower SecAgg+ halted in its {stage} stage (see its log above)")
        if stage == "setup":  # its ring includes the node itself; the unmask stage edits it later
            graph = {index[c]: {index[p] for p in peers if p != c} for c, peers in state.nid_to_neighbours.items()}
            degree = min(len(peers) for peers in graph.values())
            # the threshold our side applies (neighbours only), which also satisfies Flower's check
            dropped = choose_dropped(graph, dropped_count(n, dropout), flower_threshold)
    if strategy.average is None:
        raise RuntimeError("Flower SecAgg+ finished without an aggregate")
    (mean_secure,) = parameters_to_ndarrays(strategy.average)
    # stochastic rounding: under one step per client, so one step on the mean (+ float noise)
    tolerance = 1.0 / SCALE + 1e-9
    import flwr

    return record(
        "flower", n, length, flower_threshold, degree, dropped,
        client, server, up, down, np.asarray(mean_secure, dtype=np.float64), vectors, tolerance,
        {"num_shares": state.num_shares, "flwr": flwr.__version__},
    )  # fmt: skip


def flower_worker() -> int:
    """``--flower-side``: read one JSON request per line on stdin, answer one JSON line on stdout.
    Anything Flower prints goes to stderr, so stdout carries only answers."""
    out = sys.stdout
    sys.stdout = sys.stderr
    import flwr  # noqa: F401 - fail here, not mid-run, if the interpreter lacks it

    run_flower(5, 10, 0.0, None, 3)  # warm-up, untimed: imports, first key generation, allocator
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            answer = run_flower(**request)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails loudly
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


class FlowerSide:
    """The Flower worker subprocess, kept alive across runs so repeats can alternate with ours."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--flower-side"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        if not hello.get("ready"):
            raise RuntimeError(f"the Flower worker did not start: {hello}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Flower worker exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def run(self, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"Flower side failed: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def flower_version(python: str) -> str | None:
    """flwr's version in ``python``, or None when that interpreter is missing or lacks flwr."""
    try:
        done = subprocess.run(
            [python, "-c", "import flwr; print(flwr.__version__)"], capture_output=True, text=True, timeout=120
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# --------------------------------------------------------------------------------------- main
def combine(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the measured figures over repeats; the check must hold in every repeat."""
    out = dict(reps[0])
    for key, value in reps[0].items():
        if key == "max_abs_error":
            out[key] = max(r[key] for r in reps)
        elif isinstance(value, float) and key != "tolerance":
            out[key] = C.median([r[key] for r in reps])
        elif isinstance(value, dict):
            out[key] = {k: C.median([r[key][k] for r in reps]) for k in value}
    out["correct"] = all(r["correct"] for r in reps)
    out["repeats"] = len(reps)
    out["inputs_digest"] = [r["inputs_digest"] for r in reps]
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def degree_arg(value: str) -> int | None:
    """``all`` (every pair, plain SecAgg) or a SecAgg+ graph degree."""
    if value == "all":
        return None
    degree = int(value)
    if degree < 2 or degree % 2:
        # Flower needs an odd num_shares = degree + 1: with an even one its setup stage sends the
        # clients one count and then bumps its own, and every client fails in share_keys (flwr 1.42)
        raise argparse.ArgumentTypeError(f"{value!r}: a SecAgg+ degree must be even and at least 2 (or 'all')")
    return degree


def compare(n: int, length: int, dropout: float, neighbours: int | None, repeats: int, flower: FlowerSide) -> dict:
    """Both protocols on the same round, ``repeats`` times, alternating which goes first."""
    from bench_crypto import secagg_config

    threshold = secagg_config(n, neighbours).threshold
    ours_reps, flower_reps = [], []
    for k in range(repeats):
        request = {"n": n, "length": length, "dropout": dropout, "neighbours": neighbours, "seed": k}
        for side in ("ours", "flower") if k % 2 == 0 else ("flower", "ours"):
            if side == "ours":
                ours_reps.append(run_ours(**request))
            else:
                flower_reps.append(flower.run(threshold=threshold, **request))
        o, f = ours_reps[-1], flower_reps[-1]
        C.say(
            f"  degree {o['degree']:<2} n={n:<3} repeat {k}: client {o['client_s_mean']:.4f}s vs "
            f"{f['client_s_mean']:.4f}s, server {o['server_s']:.4f}s vs {f['server_s']:.4f}s (ours vs Flower)"
        )
    o, f = combine(ours_reps), combine(flower_reps)
    row: dict[str, Any] = {
        "clients": n,
        "neighbours": neighbours,
        "degree": o["degree"],
        "ours": o,
        "flower": f,
        "same_inputs": o["inputs_digest"] == f["inputs_digest"],
    }
    for key in (
        "client_s_mean",
        "client_cpu_s_mean",
        "client_with_wire_s_mean",
        "server_s",
        "server_cpu_s",
        "server_with_wire_s",
        "client_up_bytes_mean",
        "client_down_bytes_mean",
        "server_in_bytes",
        "server_out_bytes",
    ):
        row[f"ratio_{key}"] = ratio(o[key], f[key])
    return row


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=None, help="n values (default 10 20 50; --quick 5)")
    p.add_argument("--length", type=int, default=None, help="floats per client vector (default 10000; --quick 1000)")
    p.add_argument("--dropout", type=float, default=0.1, help="fraction of clients dropping after sharing keys")
    p.add_argument(
        "--neighbours",
        type=degree_arg,
        nargs="+",
        default=None,
        help="graph degrees, the same on both sides: 'all' (SecAgg) or k (SecAgg+); default all 8 (--quick: all)",
    )
    p.add_argument("--flower-python", default=DEFAULT_FLOWER_PYTHON, help="interpreter of the venv with flwr")
    p.add_argument("--flower-side", action="store_true", help="internal: run as the Flower worker")
    args = p.parse_args()
    if args.flower_side:
        return flower_worker()
    clients = args.clients or ([5] if args.quick else [10, 20, 50])
    length = args.length or (1000 if args.quick else 10_000)
    repeats = args.repeats or (1 if args.quick else 5)
    degrees = args.neighbours or ([None] if args.quick else [None, 8])
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    version = flower_version(args.flower_python)
    if version is None:
        sys.exit(f"{args.flower_python} cannot import flwr: pass --flower-python with a venv that has flwr 1.42")

    C.say(
        f"SecAgg, ours vs Flower {version} SecAgg+: L={length:,}, dropout {args.dropout:.0%}, "
        f"degrees {', '.join('all pairs' if d is None else str(d) for d in degrees)}, "
        f"{repeats} repeat(s) alternating which runs first"
    )
    run_ours(5, 10, 0.0)  # warm-up, untimed: imports, first key generation, allocator (the worker does its own)
    flower = FlowerSide(args.flower_python)
    rows = []
    try:
        for neighbours in degrees:
            for n in clients:
                if neighbours is not None and neighbours >= n - 1 and None in degrees:
                    continue  # the same graph as all pairs, already measured
                rows.append(compare(n, length, args.dropout, neighbours, repeats, flower))
    finally:
        flower.close()

    def pair(r: dict, key: str, scale: float = 1.0) -> list[Any]:
        a, b = r["ours"][key] * scale, r["flower"][key] * scale
        return [a, b, f"{ratio(a, b):.3f}x"]

    def label(r: dict) -> str:
        return "all" if r["neighbours"] is None else str(r["degree"])

    C.say()
    C.say(
        C.table(
            ["degree", "n", "t", "dropped", "client ms ours", "client ms Flower", "ratio", "server ms ours",
             "server ms Flower", "ratio", "up B/client ours", "up B/client Flower", "ratio",
             "down B/client ours", "down B/client Flower", "ratio", "max|err| ours", "max|err| Flower"],
            [
                [label(r), r["clients"], r["ours"]["threshold"], r["ours"]["dropped"],
                 *pair(r, "client_s_mean", 1000), *pair(r, "server_s", 1000),
                 *pair(r, "client_up_bytes_mean"), *pair(r, "client_down_bytes_mean"),
                 f"{r['ours']['max_abs_error']:.1e}", f"{r['flower']['max_abs_error']:.1e}"]
                for r in rows
            ],
            title=f"protocol work per party, median of {repeats} (wall ms; client = mean over survivors; "
            "bytes = message contents; ratio = ours / Flower)",
        )
    )  # fmt: skip
    C.say()
    C.say(
        C.table(
            ["degree", "n", "client CPU ms ours", "client CPU ms Flower", "ratio", "server CPU ms ours",
             "server CPU ms Flower", "ratio", "client+wire ms ours", "client+wire ms Flower", "ratio",
             "server+wire ms ours", "server+wire ms Flower", "ratio"],
            [
                [label(r), r["clients"], *pair(r, "client_cpu_s_mean", 1000), *pair(r, "server_cpu_s", 1000),
                 *pair(r, "client_with_wire_s_mean", 1000), *pair(r, "server_with_wire_s", 1000)]
                for r in rows
            ],
            title="the same in CPU time (steadier on a loaded machine), and wall time including each party's "
            "(de)serialisation of what it sends and receives (our JSON + pydantic checks; Flower's protobuf)",
        )
    )  # fmt: skip
    path = C.write_results(
        NAME,
        {
            "settings": {
                "clients": clients,
                "length": length,
                "dropout": args.dropout,
                "neighbours": degrees,
                "repeats": repeats,
                "quick": args.quick,
                "clip": CLIP,
                "scale": SCALE,
                "flower_python": args.flower_python,
                "flwr": version,
                "niceness": os.nice(0),
            },
            "rows": rows,
        },
        args.out,
    )
    C.say(f"\nresults: {path}")
    failures = [
        f"{side} degree {label(r)} n={r['clients']}: max|err| {r[side]['max_abs_error']:.2e} > "
        f"{r[side]['tolerance']:.2e}"
        for r in rows
        for side in ("ours", "flower")
        if not r[side]["correct"]
    ]
    mismatched = [r["clients"] for r in rows if not r["same_inputs"]]
    if mismatched:
        failures.append(f"the two venvs drew different inputs for n={mismatched} (numpy versions differ?)")
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
