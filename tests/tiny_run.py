"""The smallest `scripts/train.py` run that still checkpoints twice and learns: overrides
shared by the tests that launch training as a process."""

TINY_RUN = [
    "total_steps=256",
    "num_envs=8",
    "chunk_steps=128",
    "agent.hidden=[8]",
    "agent.batch_size=8",
    "agent.buffer_size=256",
    "agent.learning_starts=32",
    "log.progress=false",
    "eval.enabled=false",
]
