"""The data-plane images built without Docker: the shared Debian root filesystem (python3 and
cryptography) plus `deploy/images/*.py`, as OCI images made with umoci, imported into the
node's containerd.

One layout holds a base layer (the root filesystem) and one layer with the programs; the `nf`,
`proxy` and `loadgen` tags differ only in their entrypoint, which is the Dockerfile's (run as
user 65534, `PYTHONDONTWRITEBYTECODE`, working directory `/app`). Users with Docker build
`deploy/images/Dockerfile` instead; the manifests take either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def base_layout(work: Path, rootfs: Path) -> tuple[Path, Path]:
    """An OCI layout whose `base` tag is the root filesystem, and the bundle it is unpacked in
    (the next layer's files go under `bundle/rootfs`)."""
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
    return layout, bundle


def build_layout(work: Path, rootfs: Path, sources: Path = SOURCES) -> Path:
    """An OCI layout with a tag per data-plane program; returns the layout's directory."""
    layout, bundle = base_layout(work, rootfs)
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
    for other in run("umoci", "ls", "--layout", single).stdout.split():
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


CONTROLLER = "controller"
SITE = "/opt/hmk8s"  # the controller image's Python path: its packages and hmk8s
# what the operator loads when it runs: its module, the backend it drives, the API client
OPERATOR_IMPORTS = ("hmk8s.control.operator", "hmk8s.control.cluster", "kubernetes.client")


def requirement_closure(roots: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that `roots` (PEP 508 strings) need, transitively."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), ()) for r in roots]
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in ("", *extras)
        ):
            continue
        key = canonicalize_name(req.name)
        if key in found:
            continue
        try:
            found[key] = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise NodeError(f"controller image: {req.name} is not installed here") from None
        todo += [(Requirement(r), tuple(req.extras)) for r in found[key].requires or []]
    return found


def operator_distributions() -> list[metadata.Distribution]:
    """What the controller image carries: the distributions the operator imports, within the
    requirement closure of hmk8s with its `k8s` extra (so no test-only package rides along)."""
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    closure = requirement_closure(
        [*project["dependencies"], *project["optional-dependencies"]["k8s"]]
    )
    probe = "import sys; " + "; ".join(f"import {m}" for m in OPERATOR_IMPORTS)
    probe += "; print(' '.join(m.split('.')[0] for m in list(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
    )
    if done.returncode != 0:
        raise NodeError(f"controller image: the operator does not import here: {done.stderr}")
    owners = metadata.packages_distributions()
    names = {canonicalize_name(d) for m in set(done.stdout.split()) for d in owners.get(m, [])}
    return [closure[n] for n in sorted(names & closure.keys())]


def copy_distribution(dist: metadata.Distribution, site: Path) -> None:
    """An installed distribution's files below its site-packages (no scripts, no bytecode)."""
    for file in dist.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue
        target = site / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dist.locate_file(file), target)


def build_controller_layout(work: Path, rootfs: Path) -> Path:
    """The operator's image: the root filesystem, a layer with the Python packages it imports
    (copied from this interpreter's site-packages: same versions as here, no network), and a
    layer with hmk8s; the Dockerfile's user, environment and entrypoint."""
    layout, bundle = base_layout(work, rootfs)
    site = bundle / "rootfs" / SITE.lstrip("/")
    for dist in operator_distributions():
        copy_distribution(dist, site)
    run("umoci", "repack", "--image", f"{layout}:packages", bundle, timeout=600)
    shutil.copytree(REPO / "hmk8s", site / "hmk8s", ignore=shutil.ignore_patterns("__pycache__"))
    run("umoci", "repack", "--image", f"{layout}:{CONTROLLER}", bundle)
    run(
        "umoci",
        "config",
        "--image",
        f"{layout}:{CONTROLLER}",
        "--config.user=65532:65532",
        "--config.workingdir=/tmp",
        f"--config.env=PYTHONPATH={SITE}",
        "--config.env=PYTHONDONTWRITEBYTECODE=1",
        "--config.env=PYTHONUNBUFFERED=1",
        "--config.env=JAX_PLATFORMS=cpu",
        "--config.env=HOME=/tmp",
        "--config.entrypoint=python3",
        "--config.entrypoint=-m",
        "--config.entrypoint=hmk8s.control.operator",
    )
    return layout


def build_and_import_controller(node: Layout, node_files: Path) -> str:
    """Build the controller image and import it into the node's containerd; its name."""
    with tempfile.TemporaryDirectory(prefix="hmk8s-images-", dir=node.root) as tmp:
        work = Path(tmp)
        layout = build_controller_layout(work, node_files / ROOTFS)
        import_tag(node, layout, CONTROLLER, work)
    return image_name(CONTROLLER)
