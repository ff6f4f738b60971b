"""The Anakin trainer: acting, env steps, replay and updates compiled into one `lax.scan`
over the simulator (or any `EnvSpec`)."""
