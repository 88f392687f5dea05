"""Hold the session's one TradingModel: create it on the first TrainEpisode, reuse it for every later one.

Training and evaluation both run in pieces the actor sends to itself, so Ping and Stop are answered
between them. A model process restarted mid-session (its factory restores the last checkpoint) restores
the model on the first TrainEpisode or EvaluateEpisode it gets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Unpack

from actors.base import ServiceActor, ServiceArgs
from actors.ports import ModelFactory, TrainableModel, TransportError
from messages import (
    CheckpointWritten,
    Command,
    EpisodeFinished,
    EpisodeTrained,
    ErrorRaised,
    EvaluateEpisode,
    EvaluationComputed,
    EvaluationFinished,
    EvaluationReport,
    FinishEvaluation,
    ModelCreated,
    ModelReused,
    TrainEpisode,
    TrainingMetrics,
    TrainingProgress,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _TrainPiece:
    """Internal: train the next piece of the current episode."""


@dataclass(frozen=True, slots=True)
class _EvalPiece:
    """Internal: run the next piece of the current evaluation pass."""


RECORD_ROW_BYTES = 40
"""Bytes of one eval record row on the wire: timestamp, close, position, equity, buy-and-hold equity."""


@dataclass(slots=True)
class _EvalJob:
    peer: bytes
    request: EvaluateEpisode
    started_at: float
    pieces: int = 0


@dataclass(slots=True)
class _Job:
    peer: bytes
    request: TrainEpisode
    started_at: float
    steps_before: int
    done: int = 0
    env_failures: int = 0


class ModelActor(ServiceActor):
    """Sole owner of the session's model; trains it per TrainEpisode, evaluates it per EvaluateEpisode."""

    name = "model"

    def __init__(
        self,
        *,
        factory: ModelFactory,
        piece_steps: int,
        progress_s: float = 0.5,
        env_retries: int = 10,
        retry_wait_s: float = 1.0,
        max_reply_bytes: int = 64 << 20,
        **base: Unpack[ServiceArgs],
    ) -> None:
        """Create the actor; the model itself is built by the first request that needs it.

        Args:
            piece_steps: steps of one training piece, and bars of one evaluation piece.
            max_reply_bytes: the largest message the session accepts; eval records longer than half of
                it go in pieces, one per EvaluateEpisode with an offset.
        """
        super().__init__(**base)
        self._factory = factory
        self._piece_steps = piece_steps
        self._record_rows = max(1, max_reply_bytes // (2 * RECORD_ROW_BYTES))
        # A portfolio's rows grow with its assets: the env actor cuts its pieces to this many bytes too.
        self._record_bytes = max(1, max_reply_bytes // 2)
        self._progress_s = progress_s
        self._env_retries = env_retries
        self._retry_wait_s = retry_wait_s
        self._model: TrainableModel | None = None
        self._job: _Job | None = None
        self._eval: _EvalJob | None = None
        self._evaluated = 0
        self._next_progress = 0.0
        self._checkpointed_at = -1
        self._initial_error = ""
        self._episode = 0

    @property
    def model(self) -> TrainableModel | None:
        """The session's model, once created."""
        return self._model

    def handle(self, peer: bytes, msg: Command) -> None:
        """Serve TrainEpisode and EvaluateEpisode."""
        match msg:
            case TrainEpisode():
                self._start_episode(peer, msg)
            case EvaluateEpisode():
                self._evaluate(peer, msg)
            case _:
                super().handle(peer, msg)

    def on_internal(self, message: object) -> object:
        """Continue training or evaluating piece by piece."""
        match message:
            case _TrainPiece():
                self._train_piece()
            case _EvalPiece():
                self._eval_piece()
            case _:
                return super().on_internal(message)
        return None

    def _ensure_model(self, episode: int) -> TrainableModel:
        if self._model is None:
            return self._create_model(episode)
        logger.info("reusing model %s for episode %d", self._model.model_id, episode)
        self.publish(ModelReused(model_id=self._model.model_id, episode=episode))
        return self._model

    def _create_model(self, episode: int) -> TrainableModel:
        self.set_state("building the model")
        model = self._factory.create(self.client("env"), self._on_values)
        self._model = model
        self.set_state("idle")
        self._checkpointed_at = model.num_timesteps
        how = f"restored from {model.restored_from}" if model.restored_from else "created"
        logger.info(
            "model %s %s (%s on %s, %d parameters, step %d)",
            model.model_id,
            how,
            self._factory.algorithm,
            model.device,
            model.parameters,
            model.num_timesteps,
        )
        self.publish(
            ModelCreated(
                model_id=model.model_id,
                algorithm=self._factory.algorithm,
                device=model.device,
                parameters=model.parameters,
                episode=episode,
                restored_from=model.restored_from,
                total_steps=model.num_timesteps,
            )
        )
        if not model.restored_from:
            # A model that dies before its first episode ends comes back with the same id.
            self._initial_error = self._checkpoint(episode - 1, complete=True)
        return model

    def _start_episode(self, peer: bytes, msg: TrainEpisode) -> None:
        job = self._job
        if job is not None:
            if job.request.episode == msg.episode:
                # The session asked again (it lost the first request in a restart): answer this one.
                job.peer, job.request = peer, msg
                return
            self.reply(peer, self.failure(msg, f"episode {job.request.episode} is still training"))
            return
        if self._eval is not None:
            busy = f"episode {self._eval.request.episode} is still being evaluated"
            self.reply(peer, self.failure(msg, busy))
            return
        model = self._ensure_model(msg.episode)
        if self._initial_error:
            self.reply(peer, self.failure(msg, self._initial_error))
            self._initial_error = ""
            return
        self._episode = msg.episode
        self._job = _Job(peer, msg, self._clock.monotonic(), model.num_timesteps)
        self._busy = True
        self.set_state(f"training episode {msg.episode}")
        self.actor_ref.tell(_TrainPiece())

    def _train_piece(self) -> None:
        job, model = self._job, self._model
        if job is None or model is None:
            return
        piece = min(self._piece_steps, job.request.steps - job.done)
        before = model.num_timesteps
        try:
            job.done += model.learn(piece, self._tick)
        except TransportError as exc:
            self._env_lost(job, model.num_timesteps - before, exc)
            return
        job.env_failures = 0
        self._publish_progress(force=True)
        if job.done < job.request.steps:
            self.actor_ref.tell(_TrainPiece())
            return
        seconds = max(self._clock.monotonic() - job.started_at, 1e-9)
        finished = EpisodeFinished(
            model_id=model.model_id,
            episode=job.request.episode,
            steps=job.done,
            total_steps=model.num_timesteps,
            seconds=seconds,
            steps_per_s=job.done / seconds,
        )
        logger.info(
            "model %s trained episode %d: %d steps in %.1f s (%.0f steps/s)",
            finished.model_id,
            finished.episode,
            finished.steps,
            finished.seconds,
            finished.steps_per_s,
        )
        self.publish(finished)
        self._end_job()
        error = self._checkpoint(job.request.episode, complete=True)
        if error:
            self.reply(job.peer, self.failure(job.request, error))
            return
        self.reply(job.peer, EpisodeTrained.from_value(finished, correlation_id=job.request.msg_id))

    def _end_job(self) -> None:
        self._job = None
        self._busy = False
        self.set_state("idle")

    def _env_lost(self, job: _Job, partial: int, exc: Exception) -> None:
        """Retry the piece after the env actor failed to answer; give up after `env_retries` tries."""
        job.done += max(partial, 0)
        job.env_failures += 1
        error = f"env actor did not answer ({exc})"
        if job.env_failures > self._env_retries:
            self.publish(ErrorRaised(where="model.train", error=error, fatal=True))
            self.reply(
                job.peer, self.failure(job.request, f"{error}; gave up after {self._env_retries} retries")
            )
            self._end_job()
            return
        logger.warning("model: %s; retrying the piece (%d of %d)", error, job.env_failures, self._env_retries)
        self.publish(ErrorRaised(where="model.train", error=error))
        self.set_state("waiting for the env actor")
        self.actor_stopped.wait(self._retry_wait_s)
        self.actor_ref.tell(_TrainPiece())

    def _tick(self, num_timesteps: int) -> bool:
        self._publish_progress()
        return not self.actor_stopped.is_set()

    def _publish_progress(self, *, force: bool = False) -> None:
        job, model = self._job, self._model
        now = self._clock.monotonic()
        if job is None or model is None or (not force and now < self._next_progress):
            return
        self._next_progress = now + self._progress_s
        done = model.num_timesteps - job.steps_before
        elapsed = max(now - job.started_at, 1e-9)
        rate = done / elapsed
        remaining = max(job.request.steps - done, 0)
        self.publish(
            TrainingProgress(
                model_id=model.model_id,
                episode=job.request.episode,
                steps=done,
                steps_total=job.request.steps,
                total_steps=model.num_timesteps,
                steps_per_s=rate,
                eta_s=remaining / rate if rate > 0 else 0.0,
            )
        )

    def _on_values(self, total_steps: int, values: dict[str, float]) -> None:
        model_id = self._model.model_id if self._model is not None else ""
        self.publish(
            TrainingMetrics(model_id=model_id, episode=self._episode, total_steps=total_steps, values=values)
        )

    def _evaluate(self, peer: bytes, msg: EvaluateEpisode) -> None:
        """Start the eval pass of an episode, or answer the next piece of the records of a finished one."""
        if self._job is not None:
            self.reply(peer, self.failure(msg, f"episode {self._job.request.episode} is still training"))
            return
        running = self._eval
        if running is not None:
            if running.request.episode == msg.episode:
                # The session asked again (it lost the first request in a restart): answer this one.
                running.peer, running.request = peer, msg
                return
            busy = f"episode {running.request.episode} is still being evaluated"
            self.reply(peer, self.failure(msg, busy))
            return
        if msg.offset > 0 and self._evaluated == msg.episode:
            self._send_records(peer, msg)
            return
        if self._model is None:
            if not self._factory.restores:
                self.reply(peer, self.failure(msg, "no model yet: train an episode first"))
                return
            # A restarted process: the factory restores the last checkpoint, then the pass is redone.
            self._create_model(msg.episode)
        assert self._model is not None
        self._evaluated = 0
        self._model.start_evaluation()
        self._eval = _EvalJob(peer, msg, self._clock.monotonic())
        self._busy = True
        self.set_state(f"evaluating episode {msg.episode}")
        self.actor_ref.tell(_EvalPiece())

    def _eval_piece(self) -> None:
        job, model = self._eval, self._model
        if job is None or model is None:
            return
        try:
            finished = model.evaluate(self._piece_steps)
            job.pieces += 1
            if not finished:
                self.set_state(f"evaluating episode {job.request.episode} ({job.pieces} pieces)")
                self.actor_ref.tell(_EvalPiece())
                return
            self._end_eval()
            self._evaluated = job.request.episode
            self._send_records(job.peer, job.request, seconds=self._clock.monotonic() - job.started_at)
        except Exception as exc:
            self._end_eval()
            logger.warning("model: evaluation of episode %d failed", job.request.episode, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
            self.publish(ErrorRaised(where="model.evaluate", error=error))
            self.reply(job.peer, self.failure(job.request, error))

    def _end_eval(self) -> None:
        self._eval = None
        self._busy = False
        self.set_state("idle")

    def _send_records(self, peer: bytes, msg: EvaluateEpisode, seconds: float | None = None) -> None:
        """Answer with the metrics and the records from msg.offset on, as many rows as a reply may hold.

        The first piece of a run (offset 0) also publishes EvaluationFinished.
        """
        model = self._model
        assert model is not None
        request = FinishEvaluation(
            episode=msg.episode, offset=msg.offset, limit=self._record_rows, max_bytes=self._record_bytes
        )
        computed = self.client("env").request(request)
        if not isinstance(computed, EvaluationComputed):
            raise TypeError(f"env answered FinishEvaluation with {type(computed).__name__}")
        if msg.offset == 0:
            bars = int(computed.agent.get("bars", 0))
            ruin = f", ruined at record row {computed.ruined_at}" if computed.ruined_at >= 0 else ""
            took = f" in {seconds:.1f} s" if seconds is not None else ""
            logger.info(
                "model %s evaluated episode %d over %d bars%s%s",
                model.model_id,
                msg.episode,
                bars,
                took,
                ruin,
            )
            finished = EvaluationFinished.from_value(computed, model_id=model.model_id, episode=msg.episode)
            self.publish(finished)
        report = EvaluationReport.from_value(
            computed, correlation_id=msg.msg_id, model_id=model.model_id, episode=msg.episode
        )
        self.reply(peer, report)

    def _checkpoint(self, episode: int, *, complete: bool) -> str:
        """Write a checkpoint; return an error line if it failed (the previous one stays intact)."""
        model = self._model
        if model is None:
            return ""
        self.set_state(f"checkpointing episode {episode}")
        try:
            path = self._factory.checkpoint(model, episode, complete)
        except Exception as exc:
            error = f"checkpoint of episode {episode} failed: {exc}"
            logger.warning("model %s: %s", model.model_id, error, exc_info=True)
            self.publish(ErrorRaised(where="model.checkpoint", error=error, fatal=True))
            return error
        finally:
            self.set_state("idle")
        self._checkpointed_at = model.num_timesteps
        logger.info("model %s checkpoint written: %s", model.model_id, path)
        self.publish(
            CheckpointWritten(
                model_id=model.model_id,
                episode=episode,
                complete=complete,
                total_steps=model.num_timesteps,
                path=path,
            )
        )
        return ""

    def before_stop(self, reason: str) -> None:
        """Answer a pending TrainEpisode or evaluation (they end unfinished) and checkpoint unsaved work."""
        running = self._eval
        if running is not None:
            self.reply(running.peer, self.failure(running.request, "stopped during the evaluation"))
            self._end_eval()
        job = self._job
        if job is not None:
            error = f"stopped after {job.done} of {job.request.steps} steps"
            self.reply(job.peer, self.failure(job.request, error))
            self._job = None
            self._busy = False
        model = self._model
        if model is not None and model.num_timesteps != self._checkpointed_at:
            episode = job.request.episode if job is not None else self._episode
            self._checkpoint(episode, complete=job is None)
