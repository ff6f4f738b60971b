"""A real one-machine Kubernetes cluster (kubelet, containerd, the data-plane images, the real
HPA controller): `up DIR` / `down DIR`. See `hmk8s.k8s.local.cli` and docs/local-cluster.md.
"""

from hmk8s.k8s.local.cli import entry

if __name__ == "__main__":
    entry()
