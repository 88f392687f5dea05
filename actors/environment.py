"""Hold the session's train and eval envs: created once, data swapped in place, stepped over requests."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Unpack

import numpy as np

from actors.base import ServiceActor, ServiceArgs
from actors.ports import EnvFactory, VecEnvCore
from messages import (
    AttachShared,
    BlockAccepted,
    Command,
    DataBlock,
    DataComplete,
    DataInstalled,
    DataSwapped,
    DescribeEnvs,
    EnvsCreated,
    EnvSpec,
    EnvsReset,
    EnvsStepped,
    EvaluationComputed,
    FinishEvaluation,
    ResetEnvs,
    SessionSet,
    SetSession,
    SharedAttached,
    SharedStepped,
    StepEnvs,
    StepShared,
)
from messages.commands import PORTFOLIO_ARRAYS, RECORD_ARRAYS

if TYPE_CHECKING:
    import zmq

    from services.env.records import StepOutputs

logger = logging.getLogger(__name__)

ROLES = ("train", "eval")
PORTFOLIO_FIELDS = ("symbols", "portfolio")
"""A portfolio evaluation's fields sent whole with every piece."""


class SharedStepBuffer(Protocol):
    """One role's step buffer shared with the model (services.transport.shm.SharedSteps)."""

    name: str

    def serve_token(self, step: int, step_envs: Callable[[np.ndarray], Any]) -> int:
        """Step the envs with the step's actions unless a lease already did; return how many finished."""
        ...

    def serve(
        self,
        step_envs: Callable[[np.ndarray], Any],
        *,
        interrupted: Callable[[], bool],
        woken_by: zmq.Socket[bytes] | None = None,
    ) -> int:
        """Step each next step the model writes until it stops coming or interrupted() says other work
        waits (a lease; asleep, a message on woken_by wakes it to ask); return how many."""
        ...

    def outputs(self) -> StepOutputs:
        """Return the buffer's result arrays, for the env to step into."""
        ...


class SharedBuffers(Protocol):
    """Where the env actor keeps the step buffers it shares with the model (services.transport.shm)."""

    def create(
        self, role: str, n_envs: int, obs_shape: tuple[int, ...], action: str, action_size: int
    ) -> tuple[str, int]:
        """Replace the role's buffer with a new one; return its name and size."""
        ...

    def get(self, role: str, name: str) -> SharedStepBuffer:
        """Return the role's current buffer of that name; raise if it is another."""
        ...

    def close(self) -> None:
        """Remove every buffer."""
        ...


@dataclass(slots=True)
class _SplitBuffer:
    """Arrays of one split, allocated once and refilled in place by each stream."""

    features: np.ndarray
    open: np.ndarray
    close: np.ndarray
    timestamp: np.ndarray
    tradable: np.ndarray | None = None
    """A portfolio's bool [rows, M]; None for one asset."""
    rows: int = 0
    received: int = 0

    def fits(self, rows: int, msg: DataBlock) -> bool:
        return (
            self.features.shape[0] >= rows
            and self.features.shape[1:] == msg.features.shape[1:]
            and self.open.shape[1:] == msg.open.shape[1:]
        )

    def data(self) -> tuple[np.ndarray, ...]:
        """Return the arrays the envs take: features, open, close and (a portfolio) tradable."""
        n = self.rows
        arrays = (self.features[:n], self.open[:n], self.close[:n])
        return arrays if self.tradable is None else (*arrays, self.tradable[:n])


class EnvActor(ServiceActor):
    """Serves reset/step of the vectorized envs to the model actor and takes data from the data actor."""

    name = "env"

    def __init__(
        self,
        *,
        factory: EnvFactory,
        shared: SharedBuffers | None = None,
        **base: Unpack[ServiceArgs],
    ) -> None:
        super().__init__(**base)
        self._factory = factory
        self._shared = shared
        self._envs: dict[str, VecEnvCore] = {}
        self._buffers: dict[str, _SplitBuffer] = {}
        self._bars_per_year = 252.0
        self._eval_stamps = np.zeros(0, dtype=np.int64)
        # The finished eval run's report, kept while its records are read in pieces: (episode, report).
        self._evaluation: tuple[int, dict[str, Any]] | None = None
        self.envs_created = 0
        self.session_name = ""
        self.episode = 0

    def handle(self, peer: bytes, msg: Command) -> None:
        """Serve data blocks, session names, env descriptions, resets, steps and evaluations."""
        match msg:
            case StepEnvs():
                # Only finished envs have a terminal observation: the reply carries those rows alone.
                # The sender is stamped here: on the hot path the reply is not copied again to stamp it.
                result = self._env(msg.role).step(msg.actions).finished_only()
                self.reply(peer, EnvsStepped.from_value(result, correlation_id=msg.msg_id, sender=self.name))
            case StepShared():
                # The same step with the arrays in the shared buffer: only the step number travels. After
                # the answer the handler holds a lease, stepping each next step the model writes into the
                # buffer without a request, until they stop coming (services.transport.shm).
                step_envs = self._env(msg.role).step
                buffer = self._shared_buffers().get(msg.role, msg.name)
                finished = buffer.serve_token(msg.step, step_envs)
                stepped = SharedStepped(
                    correlation_id=msg.msg_id, step=msg.step, finished=finished, sender=self.name
                )
                self.reply(peer, stepped)
                buffer.serve(step_envs, interrupted=self.requests_waiting, woken_by=self.request_socket())
            case AttachShared():
                self.reply(peer, self._attach(msg))
            case ResetEnvs():
                if msg.role == "eval":
                    self._evaluation = None
                obs = self._env(msg.role).reset(seed=None if msg.seed < 0 else msg.seed)
                self.reply(peer, EnvsReset(correlation_id=msg.msg_id, obs=obs))
            case DataBlock():
                self._take_block(msg)
                self.reply(
                    peer,
                    BlockAccepted(
                        correlation_id=msg.msg_id, split=msg.split, offset=msg.offset, rows=len(msg.close)
                    ),
                )
            case DataComplete():
                rows = self._install(msg)
                self.reply(peer, DataInstalled(correlation_id=msg.msg_id, split=msg.split, rows=rows))
            case DescribeEnvs():
                env = self._env(msg.role)
                self.reply(
                    peer,
                    EnvSpec(
                        correlation_id=msg.msg_id,
                        role=msg.role,
                        n_envs=env.n_envs,
                        obs_shape=tuple(env.observation_shape),
                        action=self._factory.action,
                        n_actions=self._factory.n_actions,
                        max_leverage=self._factory.max_leverage,
                        action_size=getattr(env, "action_size", 0),
                    ),
                )
            case SetSession():
                if msg.name != self.session_name:
                    logger.info("session name is now %s (envs kept)", msg.name)
                self.session_name, self.episode = msg.name, msg.episode
                self.reply(
                    peer,
                    SessionSet(
                        correlation_id=msg.msg_id,
                        name=msg.name,
                        episode=msg.episode,
                        envs_created=self.envs_created,
                    ),
                )
            case FinishEvaluation():
                self.reply(peer, self._evaluation_piece(msg))
            case _:
                super().handle(peer, msg)

    def on_stop(self) -> None:
        """Remove the shared step buffers, then stop as every actor does."""
        if self._shared is not None:
            self._shared.close()
        super().on_stop()

    def _shared_buffers(self) -> SharedBuffers:
        if self._shared is None:
            raise RuntimeError("this env actor shares no buffers (they are served over ipc only)")
        return self._shared

    def _attach(self, msg: AttachShared) -> SharedAttached:
        """Create the role's shared step buffer; refuse one sized for other envs than this role's."""
        shared, env = self._shared_buffers(), self._env(msg.role)
        width = int(getattr(env, "action_size", 0))
        have = (env.n_envs, tuple(env.observation_shape), self._factory.action, width)
        asked = (msg.n_envs, tuple(msg.obs_shape), msg.action, msg.action_size)
        if asked != have:
            raise ValueError(
                f"shared {msg.role} buffer refused: asked for {asked[0]} envs x obs {asked[1]} with "
                f"{asked[2]} actions of width {asked[3]}, but the {msg.role} envs are {have[0]} x "
                f"{have[1]} with {have[2]} of width {have[3]}"
            )
        name, size = shared.create(msg.role, *have)
        # The env steps straight into the buffer from now on: a step then copies nothing to share.
        env.share_outputs(shared.get(msg.role, name).outputs())
        return SharedAttached(correlation_id=msg.msg_id, role=msg.role, name=name, size=size)

    def _evaluation_piece(self, msg: FinishEvaluation) -> EvaluationComputed:
        """Return the finished eval run's metrics and its records from msg.offset, msg.limit rows at most."""
        if self._evaluation is None or self._evaluation[0] != msg.episode:
            out = self._factory.evaluation(self._env("eval"), self._eval_timestamps(), self._bars_per_year)
            self._evaluation = (msg.episode, out)
        out = self._evaluation[1]
        rows = len(out["close"])
        if not 0 <= msg.offset <= rows:
            raise ValueError(f"record offset {msg.offset} outside 0..{rows}")
        sliced = [name for name in RECORD_ARRAYS + PORTFOLIO_ARRAYS if name in out]
        limit = msg.limit if msg.limit > 0 else rows
        if msg.max_bytes > 0:
            row_bytes = sum(out[name][:1].nbytes for name in sliced) or 1
            limit = min(limit, max(1, msg.max_bytes // row_bytes))
        end = min(rows, msg.offset + limit)
        piece = {name: out[name][msg.offset : end] for name in sliced}
        piece.update({name: out[name] for name in PORTFOLIO_FIELDS if name in out})
        return EvaluationComputed(
            correlation_id=msg.msg_id,
            episode=msg.episode,
            agent=out["agent"],
            buy_and_hold=out["buy_and_hold"],
            ruined_at=out["ruined_at"],
            offset=msg.offset,
            total_rows=rows,
            **piece,
        )

    def _env(self, role: str) -> VecEnvCore:
        if role not in ROLES:
            raise ValueError(f"unknown env role {role!r} (expected train or eval)")
        env = self._envs.get(role)
        if env is None:
            raise RuntimeError(f"the {role} envs have no data yet")
        return env

    def _take_block(self, msg: DataBlock) -> None:
        if msg.split not in ROLES:
            raise ValueError(f"unknown split {msg.split!r}")
        rows = len(msg.close)
        # One asset: features [rows, F], prices [rows]; a portfolio of M: [rows, M, F], [rows, M], tradable.
        portfolio = msg.features.ndim == 3
        assets = msg.features.shape[1:2] if portfolio else ()
        if (
            msg.features.ndim not in (2, 3)
            or msg.features.shape[0] != rows
            or msg.open.shape != (rows, *assets)
            or msg.close.shape != (rows, *assets)
            or (portfolio and msg.tradable.shape != (rows, *assets))
        ):
            raise ValueError("block arrays disagree in length")
        if msg.offset < 0 or msg.offset + rows > msg.total_rows:
            raise ValueError(f"block rows {msg.offset}..{msg.offset + rows} outside 0..{msg.total_rows}")
        buf = self._buffers.get(msg.split)
        if msg.offset == 0:
            if buf is None or not buf.fits(msg.total_rows, msg):
                total = msg.total_rows
                buf = _SplitBuffer(
                    features=np.empty((total, *msg.features.shape[1:]), dtype=np.float32),
                    open=np.empty((total, *assets), dtype=np.float64),
                    close=np.empty((total, *assets), dtype=np.float64),
                    timestamp=np.empty(total, dtype=np.int64),
                    tradable=np.empty((total, *assets), dtype=bool) if portfolio else None,
                )
                self._buffers[msg.split] = buf
            buf.rows, buf.received = msg.total_rows, 0
        if buf is None or buf.rows != msg.total_rows or msg.offset != buf.received:
            raise ValueError(f"{msg.split} block at row {msg.offset} is out of sequence")
        end = msg.offset + rows
        buf.features[msg.offset : end] = msg.features
        buf.open[msg.offset : end] = msg.open
        buf.close[msg.offset : end] = msg.close
        buf.timestamp[msg.offset : end] = msg.timestamp
        if buf.tradable is not None:
            buf.tradable[msg.offset : end] = msg.tradable
        buf.received = end

    def _install(self, msg: DataComplete) -> int:
        buf = self._buffers.get(msg.split)
        if buf is None or buf.received != msg.total_rows or buf.rows != msg.total_rows:
            got = 0 if buf is None else buf.received
            raise ValueError(f"{msg.split} stream incomplete: {got} of {msg.total_rows} rows")
        self._bars_per_year = msg.bars_per_year
        n = buf.rows
        if msg.split == "eval":
            self._evaluation = None
            # The staging buffer is refilled by the next stream; the report needs these bars' times.
            self._eval_stamps = buf.timestamp[:n].copy()
        env = self._envs.get(msg.split)
        if env is None:
            env = self._factory.create(msg.split, msg.bars_per_year)
            env.update_data(*buf.data())
            self._envs[msg.split] = env
            self.envs_created += 1
            logger.info("%s envs created: %d x obs %s", msg.split, env.n_envs, tuple(env.observation_shape))
            self.publish(
                EnvsCreated(
                    n_envs=env.n_envs, obs_shape=tuple(env.observation_shape), action=self._factory.action
                )
            )
        else:
            env.update_data(*buf.data())
        self.publish(DataSwapped(split=msg.split, rows=n, episode=msg.episode))
        return n

    def _eval_timestamps(self) -> np.ndarray:
        return self._eval_stamps
