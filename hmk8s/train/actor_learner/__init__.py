"""The asynchronous actor/learner trainer for blocking envs (Kubernetes clusters): env worker
threads, a batching actor, a learner thread, step histories, and the k8s run."""
