"""The embedded Ray instance a job starts when no cluster is given."""


def test_embedded_ray_answers_actor_state_queries(ray_local):
    """Ray Train's placement-group cleaner asks the State API every second whether the train controller
    is alive; without the dashboard that serves it, a fine-tuning job logged a warning a second."""
    from ray.util.state import get_actor

    @ray_local.remote(num_cpus=0)
    class Probe:
        def actor_id(self) -> str:
            import ray

            return ray.get_runtime_context().get_actor_id()

    probe = Probe.remote()
    actor_id = ray_local.get(probe.actor_id.remote())
    try:
        state = get_actor(actor_id, address=ray_local.get_runtime_context().gcs_address, timeout=30)
        assert state is not None and state.state == "ALIVE"
    finally:
        ray_local.kill(probe)
