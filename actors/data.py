"""Load and process the session's data once, then stream each episode's split to the env actor."""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Unpack

import numpy as np

from actors.base import ServiceActor, ServiceArgs
from actors.ports import DataService, RequestClient
from messages import (
    BlockAccepted,
    Command,
    DataBlock,
    DataComplete,
    DataInstalled,
    DataLoaded,
    EpisodeDataReady,
    PrepareEpisode,
)

if TYPE_CHECKING:
    from services.data.dataset import Split

logger = logging.getLogger(__name__)


class DataActor(ServiceActor):
    """Owns the processed data; streams bounded blocks to the env actor with acknowledgements."""

    name = "data"

    def __init__(
        self,
        *,
        service: DataService,
        block_rows: int,
        window: int = 2,
        ack_timeout_s: float = 60.0,
        **base: Unpack[ServiceArgs],
    ) -> None:
        super().__init__(**base)
        self._service = service
        self._block_rows = block_rows
        self._window = window
        self._ack_timeout_ms = int(ack_timeout_s * 1000)
        self._summary: DataLoaded | None = None
        self._installed: tuple[int, int, int, int] | None = None
        self.loads = 0

    def handle(self, peer: bytes, msg: Command) -> None:
        """Serve PrepareEpisode."""
        match msg:
            case PrepareEpisode():
                self.reply(peer, self._prepare(msg))
            case _:
                super().handle(peer, msg)

    def _prepare(self, msg: PrepareEpisode) -> EpisodeDataReady:
        if self._summary is None:
            self.set_state("loading")
            self._summary = self._service.load()
            self.loads += 1
            s = self._summary
            logger.info(
                "loaded %s: %d bars, %d features, %.0f bars/year%s%s in %.2f s; dropped %s",
                s.source,
                s.rows,
                len(s.features),
                s.bars_per_year,
                " (from cache)" if s.cached else "",
                ", close prices only" if s.close_only else "",
                s.seconds,
                s.dropped or "no rows",
            )
            self.publish(s)
        split = self._service.episode(msg.episode)
        streamed = msg.force or split.key != self._installed
        if streamed:
            self.set_state(f"streaming episode {msg.episode}")
            env = self.client("env")
            for name, arrays in (("train", split.train), ("eval", split.eval)):
                self._stream(env, name, arrays, msg.episode)
            self._installed = split.key
        self.set_state("idle")
        return EpisodeDataReady(
            correlation_id=msg.msg_id,
            episode=msg.episode,
            train_rows=len(split.train),
            eval_rows=len(split.eval),
            bars_per_year=self._summary.bars_per_year,
            data_hash=self._summary.data_hash,
            streamed=streamed,
            train_start=_iso(split.train.first_timestamp()),
            eval_start=_iso(split.eval.first_timestamp()),
            eval_end=_iso(split.eval.last_timestamp()),
        )

    def _stream(self, env: RequestClient, split: str, arrays: Split, episode: int) -> None:
        """Send blocks with at most `window` unacknowledged, then an acknowledged end of stream."""
        total = len(arrays)
        pending: deque[str] = deque()
        # A portfolio's block_rows counts bars x assets, so its blocks are as large as one asset's.
        rows = max(1, self._block_rows // getattr(arrays, "assets", 1))
        for block in DataBlock.cut(split, arrays, rows, sender=self.name):
            env.send(block)
            pending.append(block.msg_id)
            while len(pending) >= self._window:
                self._await_ack(env, pending)
        while pending:
            self._await_ack(env, pending)
        assert self._summary is not None
        done = env.request(
            DataComplete(
                split=split, total_rows=total, bars_per_year=self._summary.bars_per_year, episode=episode
            )
        )
        if not isinstance(done, DataInstalled) or done.rows != total:
            raise RuntimeError(f"env actor did not install the {split} split: {done!r}")

    def _await_ack(self, env: RequestClient, pending: deque[str]) -> None:
        reply = env.receive(self._ack_timeout_ms)
        if reply is None:
            raise TimeoutError("env actor did not acknowledge a data block in time")
        if isinstance(reply, BlockAccepted) and reply.correlation_id in pending:
            pending.remove(reply.correlation_id)
            return
        raise RuntimeError(f"env actor answered a data block with {type(reply).__name__}: {reply}")


def _iso(ns: np.int64 | int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))
