"""The domain model of docs/DESIGN: use cases, the action space, observations, rewards, metrics,
encoders, the env's params and state, and the placement's changes. Everything else (the
simulator's load and queue dynamics, the Kubernetes backend, the controller, the trainers)
builds on these, so they never depend on each other for a definition."""
