"""The data-plane images built without Docker: the shared Debian root filesystem (python3 and
cryptography) plus `deploy/images/*.py`, as OCI images made with umoci, imported into the
node's containerd.

One layout holds a base layer (the root filesystem) and one layer with the programs; the `nf`,
`proxy` and `loadgen` tags differ only in their entrypoint, which is the Dockerfile's (run as
user 65534, `PYTHONDONTWRITEBYTECODE`, working directory `/app`). Users with Docker build
`deploy/images/Dockerfile` instead; the manifests take either.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from hmk8s.k8s.emulated.apiserver import REPO
from hmk8s.k8s.local.node import Layout, NodeError, import_image, run

PROGRAMS = {"nf": "nf.py", "proxy": "proxy.py", "loadgen": "loadgen.py"}
SOURCES = REPO / "deploy" / "images"
ROOTFS = "debian-bookworm-python3-rootfs.tar.xz"
REPOSITORY = "docker.io/hmk8s"
TAG = "local"


def image_name(program: str) -> str:
    """What a manifest names the image by once it is imported (`docker.io/hmk8s/nf:local`)."""
    return f"{REPOSITORY}/{program}:{TAG}"


def build_layout(work: Path, rootfs: Path, sources: Path = SOURCES) -> Path:
    """An OCI layout with a tag per program; returns the layout's directory."""
    if not rootfs.is_file():
        raise NodeError(f"image build: no root filesystem {rootfs}")
    layout = work / "oci"
    bundle = work / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:base")
    run("umoci", "unpack", "--image", f"{layout}:base", bundle)
    try:
        with tarfile.open(rootfs) as tar:
            tar.extractall(bundle / "rootfs", filter="tar")
    except (tarfile.TarError, OSError) as err:
        raise NodeError(f"image build: cannot unpack {rootfs.name}: {err}") from None
    run("umoci", "repack", "--image", f"{layout}:base", bundle)
    app = bundle / "rootfs" / "app"
    app.mkdir(exist_ok=True)
    for program in ("httpio.py", *PROGRAMS.values()):
        if not (sources / program).is_file():
            raise NodeError(f"image build: {sources / program} is missing")
        shutil.copy(sources / program, app / program)
    run("umoci", "repack", "--image", f"{layout}:app", bundle)
    for tag, program in PROGRAMS.items():
        run(
            "umoci",
            "config",
            "--image",
            f"{layout}:app",
            "--tag",
            tag,
            "--config.user=65534:65534",
            "--config.workingdir=/app",
            "--config.env=PYTHONDONTWRITEBYTECODE=1",
            "--config.env=PYTHONUNBUFFERED=1",
            "--config.entrypoint=python3",
            f"--config.entrypoint=/app/{program}",
        )
    return layout


def import_tag(node: Layout, layout: Path, tag: str, work: Path) -> None:
    """Export one tag of the layout as an OCI archive and import it as `hmk8s/<tag>:local`."""
    single = work / f"{tag}.oci"  # a copy whose index names only this tag, as `local`
    shutil.copytree(layout, single)
    for other in PROGRAMS.keys() | {"base", "app"}:
        if other != tag:
            run("umoci", "rm", "--image", f"{single}:{other}")
    run("umoci", "tag", "--image", f"{single}:{tag}", TAG)
    run("umoci", "rm", "--image", f"{single}:{tag}")
    archive = work / f"{tag}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(single, arcname=".")
    import_image(node, archive, f"{REPOSITORY}/{tag}")


def build_and_import(node: Layout, node_files: Path, sources: Path = SOURCES) -> list[str]:
    """Build every data-plane image and import it into the node's containerd; their names."""
    with tempfile.TemporaryDirectory(prefix="hmk8s-images-", dir=node.root) as tmp:
        work = Path(tmp)
        layout = build_layout(work, node_files / ROOTFS, sources)
        for tag in PROGRAMS:
            import_tag(node, layout, tag, work)
    return [image_name(t) for t in PROGRAMS]
