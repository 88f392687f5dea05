"""How long each side of a shared step buffer spins, sleeps and holds a lease (services.transport.shm).

Read as attributes of this module at each use, so that a test or a benchmark can set them.
"""

from __future__ import annotations

LEASE_IDLE_S = 0.02
"""How long a lease without an interruption check waits for the next step before it ends: a rollout's
steps come every 0.1-0.5 ms, a short update phase (16 envs) takes about 10 ms."""
LEASE_MAX_S = 0.25
"""The longest lease without an interruption check: the env actor's other requests wait no longer."""
CHECKED_IDLE_S = 1.0
"""How long a lease that checks for other work (`interrupted`) waits for the next step: it outlasts the
learner's update phases, so a session's rollouts all step within one lease instead of starting each
with a token (a signed request that must also wake the env actor's socket poll)."""
CHECKED_MAX_S = 5.0
"""The longest lease that checks for other work: well inside the supervisor's limit on one message."""
CHECK_S = 0.002
"""How often such a lease asks whether other work waits (a request, a stop) while it serves or spins;
that work waits no longer."""
ASLEEP_CHECK_S = 0.05
"""How often a lease asleep on its bell and its command socket asks whether other work waits: a request
wakes it at once, so this bounds only work that comes by no socket (a stop in the actor's inbox). Waking
every CHECK_S through the learner's update phase instead cost the learner 3 to 6 % of its rate on two
cores beside a CPU hog (docs/BENCHMARKS.md, section 14)."""
SPIN_DEADLINE_S = 1.0
"""How long the model waits on a serving env actor before it sends the token instead."""
ENV_SPIN_S = (0.002, 0.00002)
"""How long the env actor spins for the next actions before it sleeps on its bell, on an idle and on a
crowded machine (services.transport.doorbell.CpuLoad): the learner's forward pass and bookkeeping
between two steps take 0.1-0.5 ms, which a spinning env actor covers on a free core."""
MODEL_SPIN_S = (0.002, 0.00002)
"""How long the model spins for a step's results before it sleeps on its bell, on an idle and on a
crowded machine: a compiled step of 16 to 64 single-asset envs takes 5-15 us; on a crowded core a
longer spin keeps the env actor from the core it needs (200 us gave 0.52 of the in-process rate beside
a CPU hog at 16 envs, 20 us 0.60: docs/BENCHMARKS.md, section 14)."""
COLOCATE = True
"""Place the model's training thread and the env actor's serving thread during each rollout while other
processes keep the other cores busy (services.transport.colocate): split (the model alone on its core,
the lease on the others, asleep between steps) or on one core (a hand-over), whichever cost less a step
lately while the model's core is free of them, on one core while every core is taken."""
COLOCATED_SPIN_S = 0.002
"""How long either side spins while both are on one core, crowded or not, and the model while it has its
core alone (split): each turn of the spin yields the core, and the side it waits for is the one that
gets it."""
