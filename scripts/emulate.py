"""Clusters for trying `backend=k8s` without one: a real kube-apiserver where available, else
kmock's emulator, with the twin playing the dynamics. Installed as ``hmk8s-emulate``; see
`hmk8s.k8s.emulated.cli` for the options.
"""

from hmk8s.k8s.emulated.cli import entry

if __name__ == "__main__":
    entry()
