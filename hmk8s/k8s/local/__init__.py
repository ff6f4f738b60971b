"""A real one-machine Kubernetes cluster for the backend: control plane, a kubelet that runs the
data-plane images in containerd, pod networking on a bridge of its own, Services through
kube-proxy, real CPU readings served as PodMetrics and cluster DNS for the proxies' hops.

`scripts/local_cluster.py up DIR` / `down DIR` drive it (see `docs/local-cluster.md`). Users with
kind, k3d or a real cluster skip all of it and point `KUBECONFIG` at theirs.
"""
